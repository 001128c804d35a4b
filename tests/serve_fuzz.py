#!/usr/bin/python3
"""Malformed requests against `strata serve`, over raw sockets: truncated
and oversized bodies, wrong types, huge numbers, invalid UTF-8, deep
nesting, broken HTTP, and slow clients that stop halfway. After each
batch the server must still answer /health, and every answer must be
HTTP with a JSON error object (or a closed connection for broken HTTP).
Called by tests/serve_test.sh:

    serve_fuzz.py HOST PORT API_KEY IDLE_TIMEOUT_S

Prints how many requests it sent; exits 1 when the server failed to answer.
"""
import json
import random
import socket
import sys
import time

host, port, key, idle = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
rng = random.Random(20261204)
sent = 0
problems = []


def raw(data, read=True, timeout=30):
    """Sends bytes, returns (status, body) or (None, b'') when closed without an answer."""
    global sent
    sent += 1
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(data)
        if not read:
            return None, b''
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not b:
                break
            chunks.append(b)
            whole = b''.join(chunks)
            head, sep, body = whole.partition(b'\r\n\r\n')
            if sep and b'content-length:' in head.lower():
                n = int(head.lower().split(b'content-length:')[1].split(b'\r\n')[0])
                if len(body) >= n:
                    break
        whole = b''.join(chunks)
        if not whole.startswith(b'HTTP/1.'):
            return None, whole
        return int(whole.split(b' ')[1]), whole.partition(b'\r\n\r\n')[2]
    finally:
        s.close()


def post(path, body, extra=b'', length=None):
    n = len(body) if length is None else length
    return raw(b'POST ' + path + b' HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ' +
               key.encode() + b'\r\nContent-Type: application/json\r\nConnection: close\r\n' +
               extra + b'Content-Length: %d\r\n\r\n' % n + body)


def expect_error(status, body, what):
    if status is None or status < 400 or status >= 500:
        problems.append('%s: status %s' % (what, status))
        return
    try:
        e = json.loads(body)['error']
        assert isinstance(e['message'], str) and e['message']
    except Exception:
        problems.append('%s: not an error object: %r' % (what, body[:200]))


def healthy(after):
    status, body = raw(b'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    if status != 200:
        problems.append('after %s: /health answered %s %r' % (after, status, body[:100]))
        return False
    return True


# 1. bodies that are not a request: each refused with an error object
bodies = [b'', b'{', b'}', b'null', b'[]', b'"x"', b'{"prompt":', b'{"prompt": "a"',
          b'{"prompt": "\xff\xfe\xfd"}', b'{"prompt": "\xc3"}', b'{"prompt": "\\ud800"}',
          b'{"prompt": "a", "max_tokens": 1' + b'0' * 400 + b'}',
          b'{"prompt": "a", "temperature": 1e999}',
          b'{"prompt": "a", "n": 100000}', b'{"prompt": "a", "max_tokens": -5}',
          b'{"prompt": [' + b'[' * 5000 + b']' * 5000 + b']}',
          b'{"prompt": [99999999, 5]}', b'{"prompt": [1.5]}', b'{"prompt": {}}',
          b'{"prompt": "a", "stop": [' + b'"s",' * 10 + b'"s"]}',
          b'{"messages": [{"role": "user", "content": "x"}]}', b'\x00\x01\x02\x03',
          b'{"prompt": "a", "seed": 1e3}', b'{"prompt": "a", "stream": "yes"}']
for i, b in enumerate(bodies):
    status, body = post(b'/v1/completions', b)
    expect_error(status, body, 'body %d %r' % (i, b[:40]))
for i in range(160):  # random mutations of a valid request
    base = bytearray(b'{"prompt": "Hello", "max_tokens": 3, "temperature": 0.5, "stop": ["x"]}')
    for _ in range(rng.randint(1, 6)):
        k = rng.randrange(len(base))
        op = rng.randrange(3)
        if op == 0:
            base[k] = rng.randrange(256)
        elif op == 1:
            del base[k]
        else:
            base.insert(k, rng.randrange(256))
    status, body = post(rng.choice([b'/v1/completions', b'/v1/chat/completions']), bytes(base))
    if status is None or status >= 500:
        problems.append('mutation %d %r: status %s' % (i, bytes(base), status))
healthy('the bodies')

# 2. broken HTTP and sizes
for what, data in [
        ('garbage', b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + bytes(range(200))),
        ('no version', b'GET /health\r\n\r\n'),
        ('huge header', b'GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'a' * 200000 +
         b'\r\n\r\n'),
        ('bad chunk', b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked'
         b'\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n'),
        ('bad method', b'BREW /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n')]:
    status, body = raw(data)
    if status is not None and status < 400:
        problems.append('%s: status %s' % (what, status))
status, body = post(b'/v1/completions', b'{"prompt": "' + b'a' * 100000 + b'"}')
if status != 413:
    problems.append('a 100 kB body: %s, not 413' % status)
status, body = post(b'/v1/completions', b'{}', length=10 ** 12)
if status not in (413, None):
    problems.append('Content-Length 10^12: %s' % status)
healthy('broken HTTP')

# 3. truncated bodies and slow clients: the connection is dropped halfway;
# the idle timeout closes what the client leaves open
for i in range(20):
    body = b'{"prompt": "Hello there", "max_tokens": 50}'
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ' +
              key.encode() + b'\r\nContent-Length: %d\r\n\r\n' % len(body) +
              body[:rng.randrange(len(body))])
    sent += 1
    if i % 2:
        s.close()  # gone
    else:
        time.sleep(0.01)
        s.close()
slow = []
for i in range(4):  # headers a byte at a time, then silence
    s = socket.create_connection((host, port), timeout=10)
    for c in b'GET /health HTTP/1.1\r\nHo':
        s.send(bytes([c]))
        time.sleep(0.005)
    slow.append(s)
    sent += 1
time.sleep(idle + 1.5)
closed = 0
for s in slow:
    s.settimeout(2)
    try:
        s.recv(100)  # the end of the stream, or an answer before it
        closed += 1
    except ConnectionResetError:
        closed += 1
    except socket.timeout:
        pass
    s.close()
if closed != len(slow):
    problems.append('slow clients: %d of %d closed after the idle timeout' % (closed, len(slow)))
healthy('slow clients')

# 4. a client that stops reading a stream, and one that leaves mid-stream
s = socket.create_connection((host, port), timeout=10)
body = b'{"prompt": "Hello", "max_tokens": 300, "stream": true}'
s.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ' + key.encode() +
          b'\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
s.recv(10)
s.close()
sent += 1
healthy('a stream left')

# a normal request still works
status, body = post(b'/v1/completions', b'{"prompt": "Hello", "max_tokens": 2}')
if status != 200 or json.loads(body)['usage']['completion_tokens'] != 2:
    problems.append('a normal request after the rest: %s %r' % (status, body[:200]))
print('serve_fuzz: %d malformed or broken requests, %d problems' % (sent, len(problems)))
for p in problems[:20]:
    print('  ' + p)
sys.exit(1 if problems else 0)

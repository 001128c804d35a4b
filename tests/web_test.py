#!/usr/bin/python3
"""The chat page of `strata serve` in headless Chromium (Debian's chromium),
driven through the DevTools protocol over a pipe: a prompt typed into the
page, Enter pressed, the streamed answer read from the page and compared
with the same conversation asked of /v1/chat/completions directly.

usage: web_test.py STRATA   (STRATA_SOURCE_ROOT: the source tree)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

strata = sys.argv[1]
root = os.environ['STRATA_SOURCE_ROOT']
chromium = shutil.which('chromium') or shutil.which('chromium-browser')
if not chromium:
    sys.exit('web_test: chromium is missing: tools/setup.sh --tests installs it')
tmp = tempfile.mkdtemp(prefix='strata-web-')
procs = []


def fail(msg):
    print('FAIL ' + msg)
    for p in procs:
        p.kill()
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(1)


# a small Llama with the Llama 3 test tokenizer and chat template
toks = os.path.join(root, 'tests', 'data', 'tokenizers')
subprocess.run([strata, 'tokenize', '--tokenizer', os.path.join(toks, 'llama3.json'), '--out',
                os.path.join(tmp, 'tok.bin'), os.path.join(toks, 'test.txt')], check=True,
               capture_output=True)
model = os.path.join(tmp, 'm')
subprocess.run([strata, 'train', '--arch', 'llama', '--kv-heads', '2', '--layers', '2', '--embd',
                '64', '--heads', '4', '--data', os.path.join(tmp, 'tok.bin'), '--vocab', '1500',
                '--seq', '32', '--positions', '512', '--batch', '4', '--steps', '2',
                '--eval-every', '0', '--out', model], check=True, capture_output=True)
shutil.copy(os.path.join(toks, 'llama3.json'), os.path.join(model, 'tokenizer.json'))
with open(os.path.join(root, 'tests', 'data', 'chat', 'llama3.jinja')) as f:
    template = f.read()
with open(os.path.join(model, 'tokenizer_config.json'), 'w') as f:
    json.dump({'bos_token': '<|begin_of_text|>', 'eos_token': '<|end_of_text|>',
               'chat_template': template}, f)

log = open(os.path.join(tmp, 'serve.log'), 'w+')
server = subprocess.Popen([strata, 'serve', '--model', model, '--port', '0', '--parallel', '2'],
                          stdout=subprocess.DEVNULL, stderr=log)
procs.append(server)
url = None
for _ in range(1200):
    log.seek(0)
    text = log.read()
    m = re.search(r'listening on (http://[^ ]+)', text)
    if m and 'ready:' in text:
        url = m.group(1)
        break
    if server.poll() is not None:
        fail('the server ended: ' + text)
    time.sleep(0.1)
if not url:
    fail('the server did not get ready')

# Chromium, its DevTools protocol on fds 3 (to it) and 4 (from it)
to_chrome_r, to_chrome_w = os.pipe()
from_chrome_r, from_chrome_w = os.pipe()


def child_fds():
    os.dup2(to_chrome_r, 3)
    os.dup2(from_chrome_w, 4)


chrome = subprocess.Popen([chromium, '--headless=new', '--no-sandbox', '--disable-gpu',
                           '--disable-dev-shm-usage', '--no-first-run', '--remote-debugging-pipe',
                           '--user-data-dir=' + os.path.join(tmp, 'profile'), 'about:blank'],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          preexec_fn=child_fds, close_fds=False)
procs.append(chrome)
os.close(to_chrome_r)
os.close(from_chrome_w)
pending = b''
next_id = 0
deadline = time.monotonic() + 180


def call(method, params=None, session=None):
    global next_id, pending
    next_id += 1
    msg = {'id': next_id, 'method': method, 'params': params or {}}
    if session:
        msg['sessionId'] = session
    os.write(to_chrome_w, json.dumps(msg).encode() + b'\0')
    while True:
        while b'\0' not in pending:
            if time.monotonic() > deadline:
                fail('Chromium did not answer %s in time' % method)
            chunk = os.read(from_chrome_r, 1 << 20)
            if not chunk:
                fail('Chromium closed its pipe')
            pending += chunk
        one, pending = pending.split(b'\0', 1)
        reply = json.loads(one)
        if reply.get('id') == next_id:
            if 'error' in reply:
                fail('%s: %s' % (method, reply['error']))
            return reply.get('result', {})


def evaluate(session, expr):
    r = call('Runtime.evaluate', {'expression': expr, 'returnByValue': True}, session)
    return r.get('result', {}).get('value')


target = call('Target.createTarget', {'url': url + '/'})['targetId']
session = call('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
call('Runtime.enable', session=session)
for _ in range(200):  # the page loaded, and it asked /v1/models for the model's name
    if evaluate(session, 'document.readyState') == 'complete' and \
            evaluate(session, 'document.getElementById("model").textContent') == 'm':
        break
    time.sleep(0.05)
else:
    fail('the page did not show the model: %r' %
         evaluate(session, 'document.getElementById("model").textContent'))
print('ok   the page loads and names the model')

# type a prompt, press Enter, read the streamed answer
evaluate(session, 'document.getElementById("temp").value = "0";'
                  'document.getElementById("max").value = "40";'
                  'document.getElementById("prompt").focus()')
call('Input.insertText', {'text': 'Hello there, who are you?'}, session)
for kind in ('keyDown', 'keyUp'):
    call('Input.dispatchKeyEvent', {'type': kind, 'key': 'Enter', 'code': 'Enter',
                                    'windowsVirtualKeyCode': 13}, session)
state = None
lengths = set()
for _ in range(1200):
    state = evaluate(session, '''(() => {
        const m = document.querySelectorAll(".msg.assistant, .msg.error");
        const last = m[m.length - 1];
        return last ? {done: last.dataset.done, text: last.textContent,
                       cls: last.className, finish: last.dataset.finish || ""} : null;
    })()''')
    if state:
        lengths.add(len(state['text']))
    if state and state['done'] == 'yes':
        break
    time.sleep(0.01)
if not state or state['done'] != 'yes':
    fail('no answer in the page: %r' % state)
if 'error' in state['cls']:
    fail('the page shows an error: %r' % state['text'])
print('ok   the page streamed an answer of %d characters (finish: %s; seen at %d lengths)' %
      (len(state['text']), state['finish'], len(lengths)))
user = evaluate(session, 'document.querySelector(".msg.user").textContent')
if user != 'Hello there, who are you?':
    fail('the typed prompt shows as %r' % user)

# the same conversation asked of the API directly: the same greedy answer
body = json.dumps({'messages': [{'role': 'user', 'content': 'Hello there, who are you?'}],
                   'max_tokens': 40, 'temperature': 0}).encode()
req = urllib.request.Request(url + '/v1/chat/completions', data=body,
                             headers={'Content-Type': 'application/json'})
with urllib.request.urlopen(req, timeout=60) as r:
    want = json.load(r)['choices'][0]['message']['content']
if state['text'] != want:
    fail('the page shows %r; the API answers %r' % (state['text'], want))
print('ok   the page\'s answer equals the API\'s for the same conversation')
call('Browser.close')
chrome.wait(timeout=30)
server.terminate()
if server.wait(timeout=60) != 0:
    fail('the server did not exit 0 after SIGTERM')
shutil.rmtree(tmp, ignore_errors=True)
print('web_test: ok')

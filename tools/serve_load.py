#!/usr/bin/python3
"""A load test for an OpenAI-compatible server (`strata serve`, llama.cpp's
llama-server): REQUESTS completions from CLIENTS concurrent clients, each
through the `openai` Python package (PyPI), streamed, on loopback only.

It reports generated tokens per second over the whole run, the time to the
first token and between tokens, and checks every answer: no error, usage
counts that add up (completion tokens = max_tokens when the finish reason is
"length", the same prompt count for the same prompt), and, with --expect, the
text of each prompt equal to the one given (greedy outputs of `strata
generate`). Exits 1 when a check fails.

usage: PYTHONPATH=build/pyclients /usr/bin/python3 tools/serve_load.py --url URL
           [--clients 16] [--requests 64] [--max-tokens 32] [--prompts FILE]
           [--prompt-tokens N [--bytes]] [--expect FILE] [--model NAME] [--api-key KEY]
           [--time-limit S] [--json FILE] [--label TEXT]

--prompts: a JSON list of prompt texts (used in turn); without it, short
built-in ones. --prompt-tokens N: instead, one prompt per request of about N
tokens (N words of a fixed text, or N bytes' worth with --bytes), each with
its own first word. --expect: a JSON object mapping each prompt to its text.
"""
import argparse
import concurrent.futures
import json
import statistics
import sys
import threading
import time
import urllib.parse

try:
    import openai
except ImportError:
    sys.exit('serve_load: the openai package is missing: tools/setup.sh --tests installs it '
             'into build/pyclients (PYTHONPATH=build/pyclients)')

BUILT_IN = ['Once upon a time', 'The capital of France is', '12+34=', 'Hello world',
            'In the beginning', 'def main():', 'The quick brown fox', 'A B C D E']
WORDS = ('the model reads a long prompt in chunks between the tokens of the other '
         'sequences so that no request waits for another one to finish ').split()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--url', required=True, help='the server, e.g. http://127.0.0.1:8080')
    ap.add_argument('--clients', type=int, default=16)
    ap.add_argument('--requests', type=int, default=64)
    ap.add_argument('--max-tokens', type=int, default=32)
    ap.add_argument('--prompts')
    ap.add_argument('--prompt-tokens', type=int, default=0)
    ap.add_argument('--bytes', action='store_true',
                    help='--prompt-tokens counts bytes (a model whose tokens are bytes)')
    ap.add_argument('--expect')
    ap.add_argument('--model', default=None)
    ap.add_argument('--api-key', default='none')
    ap.add_argument('--temperature', type=float, default=0.0)
    ap.add_argument('--time-limit', type=float, default=600)
    ap.add_argument('--ignore-eos', action='store_true',
                    help='generate max_tokens whatever is drawn (llama.cpp\'s ignore_eos)')
    ap.add_argument('--json')
    ap.add_argument('--label', default='')
    a = ap.parse_args()
    host = urllib.parse.urlparse(a.url).hostname
    if host not in ('127.0.0.1', 'localhost', '::1'):
        sys.exit('serve_load: loopback only (127.0.0.1, localhost, ::1), not %s' % host)
    if a.prompts:
        with open(a.prompts, encoding='utf-8') as f:
            prompts = json.load(f)
    elif a.prompt_tokens > 0:
        prompts = []
        for i in range(a.requests):  # each its own from the first word on: no prompt cache helps
            w = [WORDS[(i + k) % len(WORDS)] for k in range(a.prompt_tokens)]
            if a.bytes:  # no spaces: a byte-level SentencePiece vocabulary spends three on each
                prompts.append(('%d-' % i + '-'.join(w))[:a.prompt_tokens])
            else:
                prompts.append('%d ' % i + ' '.join(w))
    else:
        prompts = BUILT_IN
    expect = None
    if a.expect:
        with open(a.expect, encoding='utf-8') as f:
            expect = json.load(f)
    client = openai.OpenAI(base_url=a.url.rstrip('/') + '/v1', api_key=a.api_key,
                           timeout=a.time_limit, max_retries=0)
    model = a.model
    if model is None:
        model = client.models.list().data[0].id
    deadline = time.monotonic() + a.time_limit
    lock = threading.Lock()
    problems = []
    prompt_counts = {}

    def one(i):
        prompt = prompts[i % len(prompts)]
        if time.monotonic() > deadline:
            return None
        t0 = time.monotonic()
        first = None
        stamps = []
        text = []
        usage = None
        finish = None
        stream = client.completions.create(model=model, prompt=prompt, max_tokens=a.max_tokens,
                                           temperature=a.temperature, stream=True,
                                           stream_options={'include_usage': True},
                                           extra_body={'ignore_eos': True} if a.ignore_eos else None)
        for chunk in stream:
            now = time.monotonic()
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.text:
                    if first is None:
                        first = now - t0
                    stamps.append(now)
                    text.append(c.text)
                if c.finish_reason:
                    finish = c.finish_reason
        out = ''.join(text)
        bad = []
        if usage is None:
            bad.append('no usage')
        else:
            if usage.total_tokens != usage.prompt_tokens + usage.completion_tokens:
                bad.append('usage does not add up: %s' % usage)
            if finish == 'length' and usage.completion_tokens != a.max_tokens:
                bad.append('finish "length" after %d tokens of %d' %
                           (usage.completion_tokens, a.max_tokens))
            if usage.completion_tokens > a.max_tokens:
                bad.append('%d tokens, more than max_tokens %d' %
                           (usage.completion_tokens, a.max_tokens))
            with lock:
                seen = prompt_counts.setdefault(prompt, usage.prompt_tokens)
            if seen != usage.prompt_tokens:
                bad.append('prompt counted %d tokens, %d before' % (usage.prompt_tokens, seen))
        if finish not in ('stop', 'length'):
            bad.append('finish reason %r' % finish)
        if expect is not None and prompt in expect and out != expect[prompt]:
            bad.append('text %r, expected %r' % (out, expect[prompt]))
        gaps = [y - x for x, y in zip(stamps, stamps[1:])]
        return {'prompt': prompt, 'text': out, 'ttft': first, 'gaps': gaps,
                'completion_tokens': usage.completion_tokens if usage else 0,
                'prompt_tokens': usage.prompt_tokens if usage else 0, 'bad': bad}

    t_start = time.monotonic()
    results = []
    errors = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.clients) as pool:
        futures = [pool.submit(one, i) for i in range(a.requests)]
        for f in concurrent.futures.as_completed(futures):
            try:
                r = f.result()
            except Exception as e:  # an HTTP or connection error
                errors.append('%s: %s (%r)' % (type(e).__name__, e, e.__cause__))
                continue
            if r is None:
                errors.append('not sent: the time limit was reached')
                continue
            results.append(r)
            for b in r['bad']:
                problems.append('%r: %s' % (r['prompt'][:40], b))
    wall = time.monotonic() - t_start
    tokens = sum(r['completion_tokens'] for r in results)
    ttft = sorted(r['ttft'] for r in results if r['ttft'] is not None)
    gaps = sorted(g for r in results for g in r['gaps'])

    def pct(v, p):
        return v[min(len(v) - 1, int(p * len(v)))] if v else float('nan')

    summary = {'label': a.label, 'clients': a.clients, 'requests': a.requests,
               'completed': len(results), 'errors': len(errors), 'problems': len(problems),
               'generated_tokens': tokens, 'wall_s': round(wall, 3),
               'tok_per_s': round(tokens / wall, 2) if wall > 0 else 0,
               'ttft_p50_s': round(pct(ttft, 0.5), 4), 'ttft_p90_s': round(pct(ttft, 0.9), 4),
               'token_gap_p50_ms': round(1000 * pct(gaps, 0.5), 2),
               'token_gap_p90_ms': round(1000 * pct(gaps, 0.9), 2),
               'prompt_tokens_mean': round(statistics.mean(r['prompt_tokens'] for r in results), 1)
               if results else 0}
    print('%s%d clients, %d requests: %d done, %d errors, %d failed checks | %d tokens in %.2f s '
          '= %.1f tok/s | first token p50 %.3f s p90 %.3f s | between tokens p50 %.1f ms' %
          (a.label + ': ' if a.label else '', a.clients, a.requests, len(results), len(errors),
           len(problems), tokens, wall, summary['tok_per_s'], summary['ttft_p50_s'],
           summary['ttft_p90_s'], summary['token_gap_p50_ms']))
    for e in errors[:10]:
        print('  error: ' + e)
    for p in problems[:10]:
        print('  check: ' + p)
    if a.json:
        with open(a.json, 'w', encoding='utf-8') as f:
            json.dump({'summary': summary, 'texts': {r['prompt']: r['text'] for r in results}},
                      f, ensure_ascii=False, indent=1)
    sys.exit(1 if errors or problems or len(results) != a.requests else 0)


if __name__ == '__main__':
    main()

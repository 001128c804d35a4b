#!/usr/bin/python3
"""`strata serve` through a client nobody here wrote: the `openai` Python
package. Completions and chat, whole and streamed, n, stop strings, seeds,
usage counts and finish reasons. Called by tests/serve_test.sh:

    serve_check.py URL API_KEY PROMPT_TOKENS_JSON

PROMPT_TOKENS_JSON maps prompts to their token counts as `strata tokenize
--template` counts them. Exits 1 at the first failed check.
"""
import json
import sys

import openai

url, key, counts_path = sys.argv[1:4]
with open(counts_path, encoding='utf-8') as f:
    counts = json.load(f)
client = openai.OpenAI(base_url=url + '/v1', api_key=key, max_retries=0, timeout=120)
failed = 0


def check(ok, what):
    global failed
    print('%s %s' % ('ok  ' if ok else 'FAIL', what))
    if not ok:
        failed += 1


model = client.models.list().data[0].id
check(bool(model), 'models lists the model (%s)' % model)

# a completion: usage counted as the tokenizer counts, finish "length"
p = 'Once upon a time'
r = client.completions.create(model=model, prompt=p, max_tokens=7, temperature=0)
check(r.object == 'text_completion' and len(r.choices) == 1, 'a completion object')
check(r.usage.prompt_tokens == counts[p], 'prompt tokens %d, the tokenizer counts %d' %
      (r.usage.prompt_tokens, counts[p]))
check(r.usage.completion_tokens == 7 and r.usage.total_tokens == counts[p] + 7,
      'completion tokens 7, total %d' % r.usage.total_tokens)
check(r.choices[0].finish_reason == 'length', 'finish reason length')
greedy = r.choices[0].text

# the same streamed: the same text in pieces, then usage
pieces, usage, finish = [], None, None
for chunk in client.completions.create(model=model, prompt=p, max_tokens=7, temperature=0,
                                       stream=True, stream_options={'include_usage': True}):
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        pieces.append(c.text)
        finish = c.finish_reason or finish
check(''.join(pieces) == greedy, 'streamed text equals the whole one (%r)' % greedy)
check(usage is not None and usage.completion_tokens == 7, 'streamed usage')
check(finish == 'length', 'streamed finish reason')

# a stop string: the text ends before it, finish "stop"
if len(greedy) > 2:
    stop = greedy[2:4] if greedy[2:4].strip() else greedy[1:3]
    r = client.completions.create(model=model, prompt=p, max_tokens=7, temperature=0, stop=[stop])
    t = r.choices[0].text
    check(stop not in t and greedy.startswith(t) and r.choices[0].finish_reason == 'stop',
          'stop %r: %r, finish %s' % (stop, t, r.choices[0].finish_reason))

# n choices with a seed: reproducible, and different seeds differ somewhere
def sampled(seed):
    r = client.completions.create(model=model, prompt=p, max_tokens=12, temperature=1.0,
                                  seed=seed, n=2)
    return [c.text for c in sorted(r.choices, key=lambda c: c.index)], r.usage

a, ua = sampled(11)
b, _ = sampled(11)
c, _ = sampled(12)
check(len(a) == 2 and a == b, 'the same seed gives the same two texts')
check(a != c, 'another seed gives other texts')
check(ua.completion_tokens <= 24 and ua.prompt_tokens == 2 * counts[p],
      'usage over n=2: %s' % ua)

# token ids as the prompt
r = client.completions.create(model=model, prompt=[1, 2, 3, 4], max_tokens=3, temperature=0)
check(r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 3, 'a prompt of token ids')

# chat, whole and streamed
msgs = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hello there'}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0)
check(r.object == 'chat.completion' and r.choices[0].message.role == 'assistant',
      'a chat completion')
check(r.usage.prompt_tokens == counts['chat'], 'chat prompt tokens %d, the template gives %d' %
      (r.usage.prompt_tokens, counts['chat']))
whole = r.choices[0].message.content
pieces, roles = [], []
for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=6,
                                            temperature=0, stream=True):
    for c in chunk.choices:
        if c.delta.role:
            roles.append(c.delta.role)
        if c.delta.content:
            pieces.append(c.delta.content)
check(roles[:1] == ['assistant'] and ''.join(pieces) == whole,
      'streamed chat equals the whole answer (%r)' % whole)

# errors arrive as the client's exceptions, with the status
try:
    client.completions.create(model='no-such-model', prompt='x', max_tokens=1)
    check(False, 'an unknown model is refused')
except openai.NotFoundError as e:
    check(e.status_code == 404, 'an unknown model: 404')
try:
    client.completions.create(model=model, prompt='x', max_tokens=1, temperature=7)
    check(False, 'temperature 7 is refused')
except openai.APIStatusError as e:
    check(e.status_code == 422 and 'temperature' in str(e), 'temperature 7: 422')
bad = openai.OpenAI(base_url=url + '/v1', api_key='wrong', max_retries=0)
try:
    bad.completions.create(model=model, prompt='x', max_tokens=1)
    check(False, 'a wrong key is refused')
except openai.AuthenticationError as e:
    check(e.status_code == 401, 'a wrong API key: 401')

sys.exit(1 if failed else 0)

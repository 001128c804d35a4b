#!/usr/bin/python3
"""Renders the chat templates of tests/data/chat with Jinja (jinja2, as the
transformers library renders them: trim_blocks, lstrip_blocks, the generation
prompt added) for a set of conversations, and writes what each gives to
tests/data/chat/expected.json, which tests/test_serve.c compares with
Strata's own rendering (src/serve/chat.c).

usage: /usr/bin/python3 tools/chat_reference.py   (Debian's python3-jinja2)
"""
import glob
import json
import os

import jinja2

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'data', 'chat')

TOKENS = {'bos_token': '<s>', 'eos_token': '</s>'}
LLAMA3_TOKENS = {'bos_token': '<|begin_of_text|>', 'eos_token': '<|eot_id|>'}

CONVERSATIONS = [
    [{'role': 'user', 'content': 'Hello'}],
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'What is 2+2?'}],
    [{'role': 'system', 'content': '  Answer in French.\n'},
     {'role': 'user', 'content': ' Bonjour \n'},
     {'role': 'assistant', 'content': '\nSalut ! '},
     {'role': 'user', 'content': 'Ça va ? 日本'}],
    [{'role': 'user', 'content': 'one'}, {'role': 'assistant', 'content': 'two'},
     {'role': 'user', 'content': 'three'}],
    [{'role': 'assistant', 'content': 'I speak first'}, {'role': 'user', 'content': 'no'}],
]


class Refused(Exception):
    pass


def raise_exception(message):
    raise Refused(message)


def main():
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals['raise_exception'] = raise_exception
    out = {'conversations': CONVERSATIONS, 'templates': {}}
    for path in sorted(glob.glob(os.path.join(HERE, '*.jinja'))):
        name = os.path.basename(path)[:-len('.jinja')]
        with open(path, encoding='utf-8') as f:
            text = f.read()
        tokens = LLAMA3_TOKENS if name.startswith('llama3') else TOKENS
        results = []
        for conv in CONVERSATIONS:
            try:
                results.append(env.from_string(text).render(messages=conv,
                                                            add_generation_prompt=True, **tokens))
            except Refused:
                results.append(None)
        out['templates'][name] = {'bos': tokens['bos_token'], 'eos': tokens['eos_token'],
                                  'rendered': results}
    with open(os.path.join(HERE, 'expected.json'), 'w', encoding='utf-8') as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()

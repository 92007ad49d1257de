"""``quantize --calib-file``: calibration prompts from the user's own text.

The static W8A8 ranges written for a layer must be the range of that layer's input over the
file's prompts: checked against the input computed independently (the hidden states the
transformers model returns, RMS-normalised in float64 by hand), on the tiny adder, whose
character tokenizer turns the built-in English prompts into ``<unk>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vllm_ascend.tools.quantize import QuantizeError, main, quantize
from vllm_ascend.tools.quantize_calib import (
    CALIBRATION_PROMPTS,
    CalibrationFileError,
    prompt_ids,
    read_calibration_file,
)
from vllm_ascend.tools.quantize_math import activation_qparams

ADDER = Path(__file__).resolve().parents[2] / "e2e" / "accuracy" / "tiny_adder" / "model"
DOCS = ["123+456=9750", "999+001=0001", "500+500=0001"]


def test_text_file_one_prompt_per_line(tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text("first prompt\n\n  \nsecond {not json}\n")
    assert read_calibration_file(f) == ["first prompt", "second {not json}"]


def test_jsonl_text_then_prompt_field(tmp_path):
    f = tmp_path / "calib.jsonl"
    f.write_text(json.dumps({"text": "a\nb", "prompt": "unused"}) + "\n\n"
                 + json.dumps({"prompt": "c"}) + "\n")
    assert read_calibration_file(f) == ["a\nb", "c"]


@pytest.mark.parametrize("name, body, message", [
    ("c.jsonl", '{"text": "ok"}\n{"text": 3}\n', r"c.jsonl, line 2: needs a non-empty string "
     r"field 'text' or 'prompt'"),
    ("c.jsonl", '{"text": "ok"}\n\n[1, 2\n', r"c.jsonl, line 3: not JSON"),
    ("c.jsonl", '"just a string"\n', r"line 1: needs a non-empty string field"),
    ("c.txt", "\n \n", r"c.txt: no prompt in it"),
    ("c.txt", b"\xff\xfe\x00", r"c.txt: cannot read it as UTF-8"),
])
def test_bad_files_name_the_file_line_and_accepted_form(tmp_path, name, body, message):
    f = tmp_path / name
    f.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(CalibrationFileError, match=message):
        read_calibration_file(f)


def test_missing_file_is_a_quantize_error(tmp_path):
    with pytest.raises(QuantizeError, match=r"--calib-file .*nope.txt: cannot read it"):
        quantize(ADDER, "W8A8", tmp_path / "x", calib_file=tmp_path / "nope.txt")
    assert main(["--model", str(ADDER), "--scheme", "W8A8", "--out", str(tmp_path / "y"),
                 "--calib-file", str(tmp_path / "nope.txt")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_prompt_ids_take_the_given_texts_cycled():
    def tok(text, return_tensors):
        return {"input_ids": torch.tensor([[len(text)]])}

    ids = prompt_ids(tok, 5, 100, texts=["a", "bb"])
    assert [int(t) for t in ids] == [1, 2, 1, 2, 1]
    assert int(prompt_ids(tok, 1, 100)[0]) == len(CALIBRATION_PROMPTS[0])


def _layer0_input_range(texts: list[str]) -> tuple[float, float]:
    """min / max over all tokens of layer 0's q_proj input, in float64 from the hidden
    states: RMSNorm(h0) * w, by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ADDER)
    model = AutoModelForCausalLM.from_pretrained(ADDER, dtype=torch.float32).eval()
    norm = model.model.layers[0].input_layernorm
    lo, hi = float("inf"), float("-inf")
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt")["input_ids"]
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[0][0].double()
            x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
            x = x * norm.weight.double()
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return lo, hi


def test_static_ranges_come_from_the_file(tmp_path):
    f = tmp_path / "adder.txt"
    f.write_text("".join(d + "\n" for d in DOCS))
    out = quantize(ADDER, "W8A8", tmp_path / "q", calib_file=f, smooth_alpha=0.0,
                   progress=False)
    tensors = load_file(str(out / "model.safetensors"))
    p = "model.layers.0.self_attn.q_proj"
    s_x, o_x = activation_qparams(*_layer0_input_range(DOCS), False)
    assert float(tensors[f"{p}.input_scale"]) == pytest.approx(s_x, rel=1e-5)
    assert float(tensors[f"{p}.input_offset"]) == pytest.approx(o_x, abs=1e-3)
    meta = json.loads((out / "quant_model_description.json").read_text())["metadata"]
    assert meta["calibration"]["prompts"] == 3 and meta["calibration"]["source"] == "adder.txt"
    # --calib-prompts takes the first N of the file
    out2 = quantize(ADDER, "W8A8", tmp_path / "q2", calib_file=f, calib_prompts=1,
                    smooth_alpha=0.0, progress=False)
    s1, _ = activation_qparams(*_layer0_input_range(DOCS[:1]), False)
    got = float(load_file(str(out2 / "model.safetensors"))[f"{p}.input_scale"])
    assert got == pytest.approx(s1, rel=1e-5)

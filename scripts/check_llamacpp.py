"""A one-off check outside CI: the converted Gemma-3-270m against llama.cpp on the same
GGUF (``make check-llamacpp``).

1. In a separate environment holding ``llama-cpp-python`` (built from its source
   distribution; circuitray does not depend on it), llama.cpp tokenizes each prompt
   with BOS and evaluates it on the quantized weights, writing the token ids and the
   last position's logits.
2. Here, the converted float32 folder's own tokenizer encodes the same prompts (ids
   compared with llama.cpp's), and the model scores llama.cpp's ids.
3. Per prompt: both top-1 tokens, the overlap of the top 10, the correlation of the
   full logit vectors, and the largest log-probability difference over llama.cpp's
   top 10. llama.cpp multiplies 4- to 8-bit weights by 8-bit-quantized activations
   where the folder holds the weights dequantized to float32 and multiplies in
   float32, so agreement means the same top tokens and close, not equal, logits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LLAMA = """
import json, sys
import numpy as np
from llama_cpp import Llama
gguf, prompts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
ids, logits = [], []
for p in prompts:  # a fresh context each: reset() keeps the last prompt's KV cache here
    llm = Llama(model_path=gguf, n_ctx=256, logits_all=True, n_threads=2, verbose=False)
    t = llm.tokenize(p.encode(), add_bos=True, special=False)
    llm.eval(t)
    ids.append(t)
    logits.append(np.asarray(llm.scores[len(t) - 1], dtype=np.float32))
np.savez(out, logits=np.stack(logits), ids=np.array(json.dumps(ids)))
"""


def _prompts() -> list[str]:
    from circuitray.models.builders.real import KNOWN_COMPLETIONS
    from circuitray.prompts.ws2 import generate_ws2

    known = [p for p, _ in KNOWN_COMPLETIONS["gemma-3-270m"]]
    ws2 = {}
    for row in generate_ws2(n=60, seed=0):  # one of each constraint type, nonce words
        ws2.setdefault(row["constraint_type"], row["prompt"])
    return known + list(ws2.values()) + ["Ça coûte 12,50 €\tou   3 × 4 = 12 ✓"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--hf", type=Path, required=True, help="the converted folder")
    ap.add_argument("--llama-python", required=True, help="a Python with llama_cpp")
    ap.add_argument("--out", type=Path, required=True, help="JSON report")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = _prompts()
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "llama.npz"
        subprocess.run(
            [args.llama_python, "-c", LLAMA, str(args.gguf), json.dumps(prompts), str(npz)],
            check=True,
        )
        theirs = np.load(npz)
        their_ids = json.loads(str(theirs["ids"]))
        their_logits = theirs["logits"]
    tok = AutoTokenizer.from_pretrained(args.hf)
    model = AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32).eval()
    rows = []
    for prompt, ids, b in zip(prompts, their_ids, their_logits, strict=True):
        ours_ids = tok(prompt).input_ids  # BOS added, as llama.cpp's
        with torch.no_grad():
            a = model(torch.tensor([ids])).logits[0, -1].double().numpy()
        b = b.astype(np.float64)
        la, lb = a - np.logaddexp.reduce(a), b - np.logaddexp.reduce(b)
        top_a, top_b = np.argsort(-a)[:10], np.argsort(-b)[:10]
        rows.append(
            {
                "prompt": prompt,
                "tokens": len(ids),
                "same_token_ids": ours_ids == ids,
                "top1": [tok.decode([int(top_a[0])]), tok.decode([int(top_b[0])])],
                "same_top1": bool(top_a[0] == top_b[0]),
                "top10_overlap": len(set(top_a) & set(top_b)),
                "logit_correlation": round(float(np.corrcoef(a, b)[0, 1]), 5),
                "max_logprob_diff_top10": round(float(np.abs(la[top_b] - lb[top_b]).max()), 4),
                "p_top1": [
                    round(float(np.exp(lp[top[0]])), 4) for lp, top in ((la, top_a), (lb, top_b))
                ],
            }
        )
    report = {
        "gguf": str(args.gguf),
        "prompts": len(rows),
        "same_token_ids": sum(r["same_token_ids"] for r in rows),
        "same_top1": sum(r["same_top1"] for r in rows),
        "min_top10_overlap": min(r["top10_overlap"] for r in rows),
        "min_logit_correlation": min(r["logit_correlation"] for r in rows),
        "max_logprob_diff_top10": max(r["max_logprob_diff_top10"] for r in rows),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    for r in rows:
        print(
            f"{r['prompt'][:44]!r:48} ids {'=' if r['same_token_ids'] else '!'} "
            f"top1 {r['top1'][0]!r}/{r['top1'][1]!r} top10 {r['top10_overlap']}/10 "
            f"r {r['logit_correlation']:.4f} dlogp {r['max_logprob_diff_top10']:.3f}"
        )
    ok = report["same_token_ids"] == report["same_top1"] == len(rows)
    summary = {k: v for k, v in report.items() if k != "rows"}
    print(f"{'agree' if ok else 'DISAGREE'}: {json.dumps(summary)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

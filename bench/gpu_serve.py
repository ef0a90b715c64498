"""Tokens/s of plain Hugging Face `generate` vs the embedded backend at 1/32/128 concurrent requests.

    python -m bench.gpu_serve                                  # ~0.4B Llama, bf16 on cuda (what gpu_serve.sh runs)
    python -m bench.gpu_serve --tiny --concurrency 1,4 --new-tokens 8     # CPU smoke test of this script

The model is a Llama built from its config with random weights (hidden 1024, 24 layers, 16 heads, 8 kv heads,
intermediate 4096, vocab 32000: 0.44B parameters) and a synthetic word-level tokenizer, so nothing is
downloaded and only torch, transformers and this repository are needed. Every request is a distinct random
prompt of --prompt-tokens tokens and generates exactly --new-tokens tokens greedily (eos is ignored on both
sides), so both paths do the same work. `generate` gets the whole batch as one call; the embedded backend
gets the requests one by one from as many threads, as a server would, and batches them itself.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (hidden, intermediate, layers, heads, kv_heads, vocab)
CONFIGS = {"0.4b": (1024, 4096, 24, 16, 8, 32000), "tiny": (64, 128, 2, 4, 2, 512)}


def build_model_dir(out: Path, config: str, dtype: torch.dtype, max_positions: int = 2048) -> tuple[Path, int]:
    """Save a random Llama of preset `config` and a word-level tokenizer covering its vocabulary;
    returns (directory, parameter count)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hidden, inter, layers, heads, kv, vocab = CONFIGS[config]
    words = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    hf_tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=max_positions,
                      eos_token_id=1, pad_token_id=0, bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init is much faster there
        model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (n, length), generator=g).tolist()


def bench_generate(model_dir: Path, device, dtype, batches: list[int], prompt_tokens: int, new_tokens: int,
                   vocab: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    out = {}

    def run(b: int, n: int, seed: int) -> float:
        ids = torch.tensor(prompts(b, prompt_tokens, vocab, seed), device=device)
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, pad_token_id=0)
        sync(device)
        assert gen.shape[1] == prompt_tokens + n
        return time.perf_counter() - t0

    run(1, 2, seed=99)  # warm-up: kernels, allocator
    for b in batches:
        wall = run(b, new_tokens, seed=b)
        out[b] = {"tokens_per_s": round(b * new_tokens / wall, 1), "wall_s": round(wall, 3)}
        print(f"  generate  batch {b:4d}: {out[b]['tokens_per_s']:9.1f} tokens/s ({wall:.2f}s)", file=sys.stderr)
    del model
    return out


def bench_embedded(model_dir: Path, device: str, dtype: str, concurrency: list[int], prompt_tokens: int,
                   new_tokens: int, vocab: int, threads: int | None) -> dict:
    from serving.embedded import EmbeddedBackend, SamplingParams

    backend = EmbeddedBackend(str(model_dir), max_batch_size=max(concurrency), max_queue=2 * max(concurrency),
                              num_threads=threads, max_new_tokens_limit=max(new_tokens, 2), device=device,
                              dtype=dtype)
    backend.eos_ids = set()  # like min_new_tokens: every request generates exactly new_tokens
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0)
    out = {}
    try:
        backend.generate_sync(prompts(1, prompt_tokens, vocab, 99)[0], SamplingParams(max_tokens=2), 600)
        for c in concurrency:
            batch = prompts(c, prompt_tokens, vocab, seed=1000 + c)
            backend.max_batch_seen = 0
            t0 = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:  # c clients, each submitting one request
                results = list(pool.map(lambda p: backend.submit(p, params).future.result(600), batch))
            wall = time.perf_counter() - t0
            tokens = sum(r.completion_tokens for r in results)
            out[c] = {"tokens_per_s": round(tokens / wall, 1), "wall_s": round(wall, 3), "tokens": tokens,
                      "max_batch_seen": backend.max_batch_seen}
            print(f"  embedded  concurrency {c:4d}: {out[c]['tokens_per_s']:9.1f} tokens/s ({wall:.2f}s)",
                  file=sys.stderr)
    finally:
        backend.close()
    return out


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_serve", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny config (CPU smoke test) instead of ~0.4B")
    p.add_argument("--concurrency", default="1,32,128", help="comma list: generate batch = concurrent requests")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs)")
    p.add_argument("--out", default=None, help="write the JSON here (default: $OUT/gpu_serve.json if OUT is set)")
    a = p.parse_args(argv)

    from serving.embedded import resolve_device_dtype

    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = resolve_device_dtype(a.device, a.dtype)
    config = "tiny" if a.tiny else "0.4b"
    levels = [int(x) for x in a.concurrency.split(",")]
    vocab = CONFIGS[config][5]
    summary = {"config": config, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "torch": torch.__version__, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
               "host": f"{platform.node()} {os.cpu_count()} cpus",
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    import transformers

    summary["transformers"] = transformers.__version__
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lam-gpu-serve-") as tmp:
        model_dir, params = build_model_dir(Path(tmp) / config, config, dtype)
        summary["params_m"] = round(params / 1e6, 1)
        print(f"{config} Llama ({summary['params_m']}M params) on {device} {summary['dtype']}: "
              f"{a.prompt_tokens} prompt + {a.new_tokens} new tokens per request", file=sys.stderr)
        gen = bench_generate(model_dir, device, dtype, levels, a.prompt_tokens, a.new_tokens, vocab)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        emb = bench_embedded(model_dir, str(device), summary["dtype"], levels, a.prompt_tokens, a.new_tokens,
                             vocab, a.threads)
    summary["results"] = [{"concurrency": c, "generate_tokens_per_s": gen[c]["tokens_per_s"],
                           "embedded_tokens_per_s": emb[c]["tokens_per_s"],
                           "embedded_over_generate": round(emb[c]["tokens_per_s"] / gen[c]["tokens_per_s"], 2),
                           "embedded_max_batch": emb[c]["max_batch_seen"]} for c in levels]
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    line = json.dumps(summary)
    print(line)
    out = a.out or (str(Path(os.environ["OUT"]) / "gpu_serve.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()

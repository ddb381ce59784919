"""nanoGCG's side of benchmarks/gcg_step.py; runs inside nanoGCG's own environment (transformers<=4.47).

Reads a JSON spec on argv[1], prints {"seconds_per_step": ...} as JSON. No hpcrobust import here.
"""

import json
import sys
import time

import torch
from nanogcg import GCGConfig
from nanogcg.gcg import GCG
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    # transformers 4.47 does not know the v5 tokenizer class or rope_parameters: build both explicitly.
    tok = PreTrainedTokenizerFast(tokenizer_file=spec["tokenizer_file"], eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    cfg = GPTNeoXConfig.from_pretrained(spec["model"], rotary_pct=spec.get("rotary_pct", 1.0),
                                       partial_rotary_factor=spec.get("rotary_pct", 1.0))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    model = GPTNeoXForCausalLM.from_pretrained(spec["model"], config=cfg, torch_dtype=dtype).eval()
    model = model.to(spec.get("device", "cpu"))

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def timed(steps: int) -> float:
        gcg_cfg = GCGConfig(num_steps=steps, optim_str_init=spec["init"], search_width=spec["search_width"],
                            topk=spec["topk"], early_stop=False, use_prefix_cache=True, seed=0, verbosity="ERROR")
        sync()
        t0 = time.perf_counter()
        gcg = GCG(model, tok, gcg_cfg)
        rows = model.get_input_embeddings().weight.shape[0]
        if rows > len(tok):  # embedding rows past the tokenizer (as Pythia pads its vocabulary) are no tokens
            pad = torch.arange(len(tok), rows, device=model.device)
            gcg.not_allowed_ids = pad if gcg.not_allowed_ids is None else torch.cat([gcg.not_allowed_ids, pad])
        gcg.run(spec["prompt"] + "{optim_str}" + spec["after"], spec["target"])
        sync()
        return time.perf_counter() - t0

    timed(2)  # warm-up
    short, long = timed(spec["steps"]), timed(2 * spec["steps"])
    print(json.dumps({"seconds_per_step": (long - short) / spec["steps"]}))


if __name__ == "__main__":
    main()

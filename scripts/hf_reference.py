#!/usr/bin/env python3
"""Writes tiny random-weight Hugging Face checkpoints of every family secmoe loads, with the
outputs `transformers` computes for fixed token ids, for `tests/hf_reference.rs`.

    python3 scripts/hf_reference.py [OUT]      # OUT defaults to target/hf-reference

Makes its own virtual environment (target/hf-venv, or $SECMOE_HF_VENV) with PyPI's torch and
transformers the first time. Each family gets OUT/<name>/ with config.json, model.safetensors
(f32, f16 or bf16) and reference.json: {"ids": [...], "output": [[...] per position],
"kind": "logits" | "hidden"}. Weights are drawn larger than transformers' initialisation (which
is near zero) so that attention, routing and the experts all matter.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("SECMOE_HF_VENV", ROOT / "target" / "hf-venv"))
PACKAGES = ["torch", "transformers", "safetensors"]


def ensure_venv():
    """Re-runs this script inside the venv (created and filled on first use)."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", "--no-cache-dir", *PACKAGES])
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def families():
    from transformers import (DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM,
                              Dots1Config, Dots1ForCausalLM, Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM,
                              Glm4MoeConfig, Glm4MoeForCausalLM, GptOssConfig, GptOssForCausalLM,
                              GraniteMoeConfig, GraniteMoeForCausalLM, GraniteMoeSharedConfig,
                              GraniteMoeSharedForCausalLM, MixtralConfig, MixtralForCausalLM, OlmoeConfig,
                              OlmoeForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig,
                              Qwen3MoeForCausalLM, SwitchTransformersConfig, SwitchTransformersEncoderModel)
    import torch
    return [
        ("mixtral", torch.bfloat16, MixtralForCausalLM, MixtralConfig(
            vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
            rms_norm_eps=1e-5, tie_word_embeddings=False)),
        ("qwen2_moe", torch.float16, Qwen2MoeForCausalLM, Qwen2MoeConfig(
            vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
            shared_expert_intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
            decoder_sparse_step=1, mlp_only_layers=[1], tie_word_embeddings=True)),
        # heads of 12 on d = 32 (q is 48 wide), per-head q/k norms, a dense layer in the middle
        ("qwen3_moe", torch.bfloat16, Qwen3MoeForCausalLM, Qwen3MoeConfig(
            vocab_size=96, hidden_size=32, intermediate_size=40, moe_intermediate_size=24,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
            rope_theta=1000000.0, tie_word_embeddings=False)),
        ("olmoe", torch.float32, OlmoeForCausalLM, OlmoeConfig(
            vocab_size=96, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=False, pad_token_id=1, eos_token_id=2, bos_token_id=None)),
        # the four scalar multipliers away from 1 (granite-3.0-1b-a400m: 12, 1/64, 0.22, 6)
        ("granitemoe", torch.bfloat16, GraniteMoeForCausalLM, GraniteMoeConfig(
            vocab_size=96, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
            embedding_multiplier=3.0, attention_multiplier=0.2, residual_multiplier=0.5,
            logits_scaling=2.5, tie_word_embeddings=True)),
        ("granitemoeshared", torch.float16, GraniteMoeSharedForCausalLM, GraniteMoeSharedConfig(
            vocab_size=96, hidden_size=32, intermediate_size=24, shared_intermediate_size=40,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, num_local_experts=8,
            num_experts_per_tok=3, embedding_multiplier=2.0, attention_multiplier=0.25,
            residual_multiplier=0.7, logits_scaling=0.8, tie_word_embeddings=False)),
        # DeepSeek-V3's MoE block: sigmoid routing with a selection bias, shared experts, a dense
        # first layer, the routed scale; GLM's attention: q/k/v biases, q/k norms, half-rotary heads
        ("glm4_moe", torch.bfloat16, Glm4MoeForCausalLM, Glm4MoeConfig(
            vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
            n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
            attention_bias=True, use_qk_norm=True, partial_rotary_factor=0.5, norm_topk_prob=True,
            routed_scaling_factor=2.5, tie_word_embeddings=False)),
        # the same MoE block unnormalized, top-3 with two shared experts, under Qwen3's attention
        ("dots1", torch.float16, Dots1ForCausalLM, Dots1Config(
            vocab_size=96, hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=2, first_k_dense_replace=1,
            norm_topk_prob=False, routed_scaling_factor=1.5, sliding_window=None, tie_word_embeddings=True)),
        # softmax routing with a selection bias, two shared experts, a dense first layer,
        # GPT-J-style rotary pairs
        ("ernie4_5_moe", torch.bfloat16, Ernie4_5_MoeForCausalLM, Ernie4_5_MoeConfig(
            vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=12,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, moe_num_experts=8,
            moe_k=3, moe_num_shared_experts=2, moe_layer_start_index=1, tie_word_embeddings=False)),
        # multi-head latent attention with q straight from x (V2-Lite's), YaRN (frequencies
        # rescaled, the scores times m(4, 0.707)^2), softmax top-3 unnormalized and scaled within
        # the best 2 of 4 groups (V2's group_limited_greedy), two shared experts, a dense first layer
        ("deepseek_v2", torch.bfloat16, DeepseekV2ForCausalLM, DeepseekV2Config(
            vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=12,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None,
            kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=6, n_routed_experts=8,
            num_experts_per_tok=3, n_shared_experts=2, first_k_dense_replace=1, routed_scaling_factor=1.5,
            topk_method="group_limited_greedy", n_group=4, topk_group=2, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
            "original_max_position_embeddings": 64, "mscale": 0.707, "mscale_all_dim": 0.707,
            "beta_fast": 32, "beta_slow": 1}, tie_word_embeddings=False)),
        # latent attention with q through a rank and its norm, YaRN with cos and sin scaled
        # (mscale ≠ mscale_all_dim), sigmoid routing with a selection bias renormalized, top-3 of
        # 16 within the best 2 of 4 groups (V3's own)
        ("deepseek_v3", torch.bfloat16, DeepseekV3ForCausalLM, DeepseekV3Config(
            vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=12,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24,
            kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=16,
            num_experts_per_tok=3, n_shared_experts=1, first_k_dense_replace=1, n_group=4, topk_group=2,
            norm_topk_prob=True, routed_scaling_factor=2.5, rope_parameters={"rope_type": "yarn",
            "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 32, "mscale": 1.0,
            "mscale_all_dim": 0.707}, tie_word_embeddings=False)),
        # sinks, biases on every attention map, layers alternating a window of 3 with full
        # attention, YaRN x32 untruncated, biased clamped SwiGLU experts (top-2 of 8) under a
        # biased router, the experts stored fused with gate and up interleaved
        ("gpt_oss", torch.bfloat16, GptOssForCausalLM, GptOssConfig(
            vocab_size=96, hidden_size=32, intermediate_size=32, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=8,
            num_experts_per_tok=2, sliding_window=3, rope_parameters={"rope_type": "yarn",
            "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
            "original_max_position_embeddings": 4096}, tie_word_embeddings=False)),
        ("switch", torch.float32, SwitchTransformersEncoderModel, SwitchTransformersConfig(
            vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, num_experts=8,
            num_sparse_encoder_layers=1, expert_capacity=1, relative_attention_num_buckets=32,
            relative_attention_max_distance=128)),
    ]


def randomize(model, generator):
    """Weights large enough that every part of the model matters: matrices uniform in
    ±1/sqrt(fan-in) (routers ×4), embeddings and position biases uniform in ±1, norms 1 ± 0.2,
    the routers' selection biases (buffers) in ±0.3; gpt-oss's sinks in ±1 and its experts' first
    biases in ±8, so that the clamps at ±7 matter (its fused experts are stored in × out)."""
    import torch
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.3 * (torch.rand(b.shape, generator=generator, dtype=torch.float32) * 2 - 1))
        for name, p in model.named_parameters():
            u = torch.rand(p.shape, generator=generator, dtype=torch.float32) * 2 - 1
            if "norm" in name:
                value = 1 + 0.2 * u
            elif name.endswith("sinks"):
                value = u
            elif name.endswith("gate_up_proj_bias"):
                value = 8 * u
            elif name.endswith(("experts.gate_up_proj", "experts.down_proj")) and model.config.model_type == "gpt_oss":
                value = u / p.shape[-2] ** 0.5
            elif "embed" in name or name.startswith("shared") or "relative_attention_bias" in name:
                value = u
            elif name.endswith("bias"):
                value = 0.1 * u
            else:
                scale = 1 / p.shape[-1] ** 0.5
                if name.endswith(("gate.weight", "classifier.weight", "router.weight")) and "proj" not in name:
                    scale *= 4
                value = scale * u
            p.copy_(value)


def mxfp4(model, path):
    """Rewrites the gpt-oss checkpoint at `path` with its experts in MXFP4 as gpt-oss ships
    them (`X_blocks`, `X_scales` per expert matrix, out × in), and sets the model's experts to
    what `transformers` dequantizes from them (its own `convert_moe_packed_tensors`)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors
    lut = torch.tensor(FP4_VALUES)
    tensors = load_file(path / "model.safetensors")
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        w = tensors.pop(name).float().transpose(1, 2).contiguous()  # E × out × in
        e, out, n = w.shape
        groups = w.reshape(e, out, n // 32, 32)
        top = groups.abs().amax(-1).clamp(min=2.0 ** -100)
        exponent = torch.ceil(torch.log2(top / 6.0)).clamp(-127, 127)
        codes = (groups[..., None] / torch.exp2(exponent)[..., None, None] - lut).abs().argmin(-1).to(torch.uint8)
        blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
        scales = (exponent + 127).to(torch.uint8)
        tensors[name + "_blocks"], tensors[name + "_scales"] = blocks, scales
        dequantized = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
        module, param = name.rsplit(".", 1)
        with torch.no_grad():
            getattr(model.get_submodule(module), param).copy_(dequantized)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (path / "config.json").write_text(json.dumps(config, indent=2))


def fp8(cls, source, path, block):
    """Writes the checkpoint at `source` to `path` with every layer's `*_proj` matrix in FP8
    as DeepSeek-V3 ships them (E4M3 values, one f32 `weight_scale_inv` per `block` × `block`,
    `quantization_config`), plus a multi-token prediction layer after the last (which a
    loader must skip); returns the model of the dequantized weights, loaded by `transformers`
    from an f32 copy (its own names for the fused experts)."""
    import shutil
    import tempfile
    import torch
    from safetensors.torch import load_file, save_file
    tensors, exact = load_file(source / "model.safetensors"), {}
    config = json.loads((source / "config.json").read_text())
    for name in list(tensors):
        w = tensors[name].float()
        exact[name] = w
        if not (name.startswith("model.layers.") and name.endswith("_proj.weight")):
            continue
        r, c = w.shape
        sr, sc = -(-r // block), -(-c // block)
        padded = torch.zeros(sr * block, sc * block)
        padded[:r, :c] = w
        blocks = padded.reshape(sr, block, sc, block)
        scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
        q = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn)
        exact[name] = (q.float() * scale[:, None, :, None]).reshape(sr * block, sc * block)[:r, :c].contiguous()
        tensors[name] = q.reshape(sr * block, sc * block)[:r, :c].contiguous()
        tensors[name + "_scale_inv"] = scale.contiguous()
    with tempfile.TemporaryDirectory() as tmp:
        save_file(exact, Path(tmp) / "model.safetensors", metadata={"format": "pt"})
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        model = cls.from_pretrained(tmp, dtype=torch.float32).eval()
    mtp = config["num_hidden_layers"]
    tensors[f"model.layers.{mtp}.enorm.weight"] = torch.ones(config["hidden_size"], dtype=torch.bfloat16)
    tensors[f"model.layers.{mtp}.eh_proj.weight"] = torch.zeros(config["hidden_size"], 2 * config["hidden_size"],
                                                                 dtype=torch.float8_e4m3fn)
    tensors[f"model.layers.{mtp}.eh_proj.weight_scale_inv"] = torch.ones(
        -(-config["hidden_size"] // block), -(-2 * config["hidden_size"] // block))
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [block, block]}
    config["num_nextn_predict_layers"] = 1
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return model


def write_reference(path, model, ids, kind, what):
    """Runs `model` on `ids` and writes what transformers computes as `path`/reference.json."""
    import torch
    with torch.no_grad():
        result = model(input_ids=torch.tensor([ids]))
    output = result.last_hidden_state if kind == "hidden" else result.logits
    path.mkdir(parents=True, exist_ok=True)
    (path / "reference.json").write_text(json.dumps({"ids": ids, "kind": kind, "output": output[0].tolist()}))
    print(f"{path}: {what}, output {tuple(output.shape)}")


def main():
    ensure_venv()
    import torch
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "hf-reference"
    ids = [3, 17, 42, 5, 88, 61, 0, 29]
    for name, dtype, cls, config in families():
        generator = torch.Generator().manual_seed(sum(map(ord, name)))
        model = cls(config).eval()
        randomize(model, generator)
        # round the weights to the stored type so that the reference sees what is saved
        model = model.to(dtype).to(torch.float32)
        kind = "hidden" if name == "switch" else "logits"
        path = out / name
        write_reference(path, model, ids, kind, f"{config.model_type}, {dtype}")
        model.to(dtype).save_pretrained(path)
        if name == "deepseek_v3":
            # its matrices in FP8 as the published DeepSeek-V3, blocks of 16 so that each matrix
            # has several
            fp8_path = out / "deepseek_v3_fp8"
            write_reference(fp8_path, fp8(cls, path, fp8_path, 16), ids, kind, "deepseek_v3, FP8 matrices")
        if name == "gpt_oss":
            # the same model with its experts in MXFP4, as the published checkpoints
            path = out / "gpt_oss_mxfp4"
            model.to(dtype).save_pretrained(path)
            mxfp4(model, path)
            # `to` converts the module in place: back to f32 for the reference
            write_reference(path, model.to(torch.float32), ids, kind, "gpt_oss, MXFP4 experts")


if __name__ == "__main__":
    main()

"""Tiny models of real architectures (Llama, Phi-3, Qwen2) with random weights and a small byte-level BPE
tokenizer, built in seconds without any download. Integration tests run the real passes on them."""

from __future__ import annotations

from pathlib import Path

ARCHS = ("llama", "phi3", "qwen2")

_CORPUS = [
    "### Text: I am so happy today!\n### The tone is:\njoy",
    "### Text: The dark alley scares me.\n### The tone is:\nfear",
    "### Text: I miss my old friends.\n### The tone is:\nsadness",
    "### Text: Wow, I did not expect that at all!\n### The tone is:\nsurprise",
    "The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
] * 4

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(arch: str, folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny `arch` model (safetensors, tokenizer, generation config) into `folder`."""
    import torch
    import transformers

    folder = Path(folder)
    tokenizer = make_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        config = transformers.LlamaConfig(**common)
        model_cls = transformers.LlamaForCausalLM
    elif arch == "phi3":
        # max_position_embeddings == original_max_position_embeddings keeps the builder off its LongRoPE path
        config = transformers.Phi3Config(**common, original_max_position_embeddings=256)
        model_cls = transformers.Phi3ForCausalLM
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**common)
        model_cls = transformers.Qwen2ForCausalLM
    else:
        raise ValueError(f"unknown arch {arch!r}; one of {ARCHS}")
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def make_mlflow_model(hf_folder: str | Path, folder: str | Path) -> Path:
    """What `mlflow.transformers.save_model` writes for the model in `hf_folder` (MLmodel, model/,
    components/tokenizer/): the folder an MLflow-format (PyTorch.MLflow) model arrives as."""
    import mlflow.transformers
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_folder)
    mlflow.transformers.save_model(
        {"model": model, "tokenizer": tokenizer},
        str(folder),
        task="text-generation",
        pip_requirements=["transformers"],  # not inferred: the inference imports torchvision
    )
    return Path(folder)

"""Stage 2: tokenizer, SFT samples, DeepSpeed engine, checkpoints and Hugging Face export."""

"""Data: document sources, tokenizer training, tokenized litdata shards and the LightningDataModule."""

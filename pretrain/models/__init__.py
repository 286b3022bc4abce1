"""Model definitions: the BERT / RoBERTa / ALBERT encoder with its heads, Hugging Face export and import, and `pretrain describe`."""

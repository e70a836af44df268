"""The data side: decoding images, walking folders, labels CSVs, samples and splits, the
train/eval transforms, the one eval view (`preprocess`), and `check-data`."""

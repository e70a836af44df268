"""The network: building a MobileNet with a new head and freezing it (`backbone`), the
checkpoint format on disk (`checkpoint`), and its cost arithmetic (`profile`)."""

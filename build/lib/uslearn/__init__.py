"""uslearn: deep clustering, FixMatch and fine-tuning for multi-label abdominal ultrasound."""

__version__ = "0.1.0"

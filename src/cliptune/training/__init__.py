"""The pieces of the Trainer (`cliptune.trainer`): train state, one epoch, checkpoints,
TensorBoard callback, run summaries. Each module holds one concept."""

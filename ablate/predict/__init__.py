"""`ablate predict`: score images, folders and videos with a trained detector.

One module per job (each one's docstring says why it is shaped so):
    cli          the click command: arguments in, one call per step
    inputs       PATHs -> the image and video files, checked before any work
    scorer       a run folder or an exported model behind one interface (`Scorer`)
    preparation  how the run's training frames were prepared: new frames are cut the same way
    frames       one file -> its crops, by `ablate data prepare`'s own code; crops -> tensors
    run          batching across files, progress; a bad file is a result, not a stop
    rows         results -> the rows (one schema for table, CSV and JSON)
    output       rows -> CSV, JSON or a table

Nothing is imported here: `ablate.cli` imports the command, which must not load torch.
"""

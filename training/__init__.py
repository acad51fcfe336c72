"""Training of the project's own plate detector (``beamplate``): data, augmentation, model,
training loop and ONNX export. Never imported by ``beam_anon`` at run time; needs the packages of
``training/requirements.txt`` (PyTorch, CPU build) on top of the runtime's. See
``docs/model_beamplate.md`` for the one command that trains and exports the shipped model."""

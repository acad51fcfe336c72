"""Package for local use and for Dataflow workers (``--setup_file ./setup.py``).

Installs one top-level package, ``beam_anon``, and the ``beam-anon`` command. The repository's
``models/`` folder (registry.json, the project's own weights) is installed as
``beam_anon.registry``; ``pipelines/`` (``python -m pipelines.anonymize``) stays in the
repository only.
"""
from setuptools import find_packages, setup

setup(
    name="beam_anon",
    version="0.1.0",
    description="Blur faces and licence plates in image datasets with Apache Beam",
    license="Apache-2.0",   # LICENSE; also the licence of the project's own weights (models/own)
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["beam_anon", "beam_anon.*"]) + ["beam_anon.registry"],
    package_dir={"beam_anon.registry": "models"},
    package_data={"beam_anon.registry": ["registry.json", "own/*.onnx", "own/*.json"]},
    entry_points={"console_scripts": ["beam-anon = beam_anon.cli:command"]},
    install_requires=[
        "apache-beam[gcp,tfrecord]==2.77.0",
        "tensorflow-cpu==2.21.0",
        "opencv-python-headless==5.0.0.93",
        "numpy==2.4.6",
        "protobuf==6.33.6",
        "onnxruntime==1.32.0",
        "onnx==1.23.2",
        "tf2onnx==1.17.0",
        "pillow==12.3.0",
        "pyjpegio==0.3.0",
        "av==18.1.0",
        "ai-edge-litert==2.3.0",
    ],
)

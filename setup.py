"""Package for local use and for Dataflow workers (``--setup_file ./setup.py``)."""
from setuptools import find_packages, setup

setup(
    name="beam_anon",
    version="0.1.0",
    description="Blur faces and licence plates in image datasets with Apache Beam",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["beam_anon", "beam_anon.*", "models", "pipelines"]),
    package_data={"models": ["registry.json"]},
    install_requires=[
        "apache-beam[gcp,tfrecord]==2.77.0",
        "tensorflow-cpu==2.21.0",
        "opencv-python-headless==5.0.0.93",
        "numpy==2.4.6",
        "protobuf==6.33.6",
        "onnxruntime==1.32.0",
        "onnx==1.23.2",
        "pillow==12.3.0",
        "pyjpegio==0.3.0",
        "av==18.1.0",
    ],
)

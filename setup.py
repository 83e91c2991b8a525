from setuptools import find_packages, setup

setup(
    name="speechkit",
    version="0.1.0",
    description="Speech and translation models built from swappable LegoNN bricks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["speechkit", "speechkit.*"]),
    install_requires=[
        # torchaudio 2.11 refuses to import next to torch 2.15 (CUDA 13.2 vs 13.0); and the
        # CPU-only torch wheel cannot load torchaudio's compiled ops (DESIGN.md §9).
        "torch>=2.11,<2.15",
        "torchaudio==2.11.*",
        "lightning>=2.4",
        "jsonargparse[signatures]>=4.27",
        "sentencepiece",
        "sacrebleu",
        "jiwer",
        "soundfile",
        "safetensors",
        "lhotse",  # Lhotse manifests and Shar in and out (speechkit/data/lhotse_io.py)
        "urllib3",  # lhotse imports it without declaring it
        "onnx",  # ONNX export (speechkit/pipelines/onnx_export.py): metadata on the exported graphs
        "onnxruntime",  # running and int8-quantising exported graphs
        "sherpa-onnx",  # the deployment runtime the export is tested against
        "espeakng-loader",
        "pyyaml",
        "numpy",
        "tensorboard",  # fit logs to TensorBoard beside the CSV metrics (speechkit/train/cli.py)
        "matplotlib",  # speechkit plot: curves, fusion heatmaps, streaming trade-offs (speechkit/pipelines/plots.py)
    ],
    extras_require={"dev": ["pytest", "ruff", "import-linter"]},
    entry_points={"console_scripts": ["speechkit=speechkit.cli:main"]},
)

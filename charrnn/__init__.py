"""`charrnn.<Class>` is the import path behind each custom artifact TYPE_NAME.

KFP v2's container entrypoint rebuilds artifacts by importing the class their
type name names; the classes themselves live in components/artifacts.py.
"""

from components.artifacts import Corpus, Vocabulary

__all__ = ['Corpus', 'Vocabulary']

"""Custom TFX components of Char-RNN TFX (one file each) and the code they share."""

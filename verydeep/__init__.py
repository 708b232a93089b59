"""verydeep: the VGG networks of Simonyan & Zisserman (ICLR 2015), trained and evaluated at scale."""

__version__ = "0.1.0"

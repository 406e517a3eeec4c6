"""One trainer module per training method; each has one entry, ``build_<method>_trainer(inputs)``.

A method's spec (``nova.methods``) names its builder as ``module:function``; the stage imports it
only when it trains (nova.train.stage). ``common.py`` holds what every trainer is built from.
"""

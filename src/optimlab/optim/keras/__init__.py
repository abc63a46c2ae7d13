"""Keras 3's optimizers as torch optimizers: a Keras recipe, reproduced exactly in PyTorch.

``optimlab.optim.keras.Adam(model.parameters(), learning_rate=1e-3, beta_1=0.9)`` is
``keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.9)``: Keras's keyword names, defaults
and update maths (checked step by step against Keras 3.15 itself: bit for bit), with everything
a torch optimizer has (param groups, ``state_dict``, torch LR schedulers, strict errors). The
updates are Keras's own code for its torch backend, transcribed operation for operation
(:mod:`optimlab.optim.keras._rules`), not torch's rules: the operation order changes results
(centred RMSprop).

What carries over from Keras, in every optimizer (see docs/conventions.md for the full table):

* weight decay is decoupled, ``θ ← θ·(1 − λ·η)`` before the update (``weight_decay=None``: off,
  also in one param group); ``exclude_from_weight_decay(var_list, var_names)`` as in Keras;
* one global step counter ``iterations`` (``t = iterations + 1`` in bias corrections), which
  advances even for parameters without a gradient (they are skipped);
* the learning rate acts as a float32 number, as Keras's learning-rate variable;
* ``clipnorm`` (per tensor), ``global_clipnorm`` (all tensors) or ``clipvalue``, at most one;
* Keras's slot names for the state (``momentum``, ``velocity``, ``accumulator``, ...).

The constructor keyword is ``learning_rate``; the param-group key stays ``lr`` so that
``torch.optim.lr_scheduler`` drives these optimizers; ``optimizer.learning_rate = x`` sets
every group, as in Keras. Look them up with
``optimlab.optim.create("adam", params, convention="keras", **hyper)``.
"""

from optimlab.optim.keras._base import KerasOptimizer, as_keras_lr
from optimlab.optim.keras.adam import Adam, Adamax, AdamW, Nadam
from optimlab.optim.keras.adaptive import Adadelta, Adagrad, RMSprop
from optimlab.optim.keras.sgd import SGD

__all__ = ["KerasOptimizer", "as_keras_lr", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW",
           "Adamax", "Nadam"]

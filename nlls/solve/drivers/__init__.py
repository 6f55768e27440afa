"""Drivers: execution strategies over the solve-state protocol (:mod:`nlls.solve.state`).

A driver decides how the iterations of a solve are executed, never what they compute:

* :class:`~nlls.solve.drivers.eager.EagerDriver` (the default): a Python loop of
  ``optimizer.step``, asking ``optimizer.terminate`` every ``check_every`` iterations;
* :class:`~nlls.solve.drivers.compiled.CompiledDriver` (``compile=True``): the same steps in
  ``torch.compile``'d chunks of ``check_every`` iterations, or the whole fixed-count solve as one
  compiled call;
* :class:`~nlls.solve.drivers.cuda_graph.CUDAGraphDriver` (``cuda_graph=True``): the whole solve
  captured once in a CUDA graph and replayed with new data.

Each depends only on the protocol (``init``/``initial_state``, ``step``, ``terminate``,
``postprocess`` and ``prepare`` of :class:`~nlls.Optimizer`).
"""

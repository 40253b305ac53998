"""The machinery of the property suite (tests/test_properties.py, through the command line
tests/property_worker.py). One job per module; each imports only modules listed above it:

  spec.py        what a spec (one generated call, as JSON: `replay` rebuilds the call from it)
                 is made of: the families, the dtypes (storage and compute type, rounding,
                 ulp), the hyperparameter names, the attrs' values, the slots of a call
  faults.py      the broken calls: the fault catalogues (kind -> weight) and the draws of a
                 fault's details; what counts as reporting one (Problem: the error types and
                 the words the message must name; MISSING, GENERIC_*); the invalid
                 hyperparameters (hyper_problems) and optimizer arguments (optimizer_ctor_problems)
  generators.py  the drawers (a seeded NumPy generator; hypothesis), the draws of a spec's
                 parts, the spec of each family (GENERATORS), and the arrays a spec stands for
                 (build_state, build_grad, build_indices)
  oracle.py      the contract every call must keep (its docstring), and the error-bounded
                 float64 reference that judges a call's new state (check_step, check_sparse)
  runners.py     one runner per family (RUNNERS): builds the variables, makes the call, judges
                 the outcome; Stats, the counts and examples of the summary

Import them as `from property_checks.X import ...` (tests/ on sys.path).
"""

"""Fleet placement: the two-stage stochastic program (Pyomo, HiGHS), its greedy warm start, and the packing of
replica counts onto concrete GPUs (CP-SAT or first-fit decreasing).

May import: core, optimizers.
"""

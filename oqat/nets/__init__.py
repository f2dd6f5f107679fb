"""The quantized networks and their costs: static layers with their cost formulas, the exact
eval-mode forward, the static `Subnet`, BN recalibration, the elastic `Supernet`, the analytic
cost walk, budgets, the encoding of packed weights and the authors' checkpoint key map."""

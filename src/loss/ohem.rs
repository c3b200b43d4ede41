//! Online hard example mining (OHEM) selection for the paper's Table 1d baseline.

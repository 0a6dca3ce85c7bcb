"""The core of Mélange: buckets, workloads, GPU options, profiles, the cost-minimising ILP and its
report, file formats. Pure and cluster-free: no network, and no imports of `profiling`, `metrics`,
`cli` or `melange.operator`.
"""

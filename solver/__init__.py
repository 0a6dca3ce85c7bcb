"""The cluster-free core of Mélange: data model, profiles, workloads and the cost-minimising ILP."""

"""The benchmark runner shared by every ``distlab bench`` workload."""

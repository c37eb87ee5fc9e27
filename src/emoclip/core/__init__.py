"""The ground floor: errors, atomic writes, user files, option checks, hardware facts, input paths."""

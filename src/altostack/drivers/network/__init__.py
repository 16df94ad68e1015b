"""Network drivers: sim and linux (SDN issue)."""

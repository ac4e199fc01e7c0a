"""What every service's ``main`` shares: lifecycle, signals, health marker, CLI plumbing."""

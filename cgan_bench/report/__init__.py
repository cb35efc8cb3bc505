"""Reports: run directories -> pandas -> markdown and plots."""

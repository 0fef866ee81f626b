"""Tool flows: Verilog export, synthesis and timing reports, board builds."""

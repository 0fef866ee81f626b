// Behavioural stand-in for the Lattice ECP5 MULT18X18D, for simulation only.
//
// Yosys ships only a black box of this cell (share/ecp5/cells_bb.v), so the
// PSC benches simulate psc.ecp5_mul.Ecp5Mult18 against this model, written
// for this project from Lattice's description of the cell ("ECP5 and ECP5-5G
// sysDSP Usage Guide", TN1267): an 18x18 multiplier with optional input
// registers (A, B), a pipeline register behind the multiplier and an output
// register in front of P[35:0]; each register picks one of CLK0..3, CE0..3
// and RST0..3 by parameter (or is bypassed with REG_*_CLK = "NONE");
// SIGNEDA/SIGNEDB make an operand two's complement.
//
// Only the subset the project uses is modelled: registers on CLK0/CE0/RST0 or
// none, synchronous reset, parallel operands (SOURCEA = SOURCEB = 0), the
// multiplier not bypassed. Any other parameter value stops the simulation with
// $fatal rather than simulating a guess, and only the pins the project
// connects exist (CLK1..3, CE1..3, RST1..3, the shift chains SRIA/SRIB/SROA/
// SROB, the cascade outputs ROA/ROB/ROC and SIGNEDP are left out: an instance
// that connects them does not elaborate). Registers start at 0 (the device's
// state after configuration); GSR and the clock-divider parameters are accepted
// and ignored.
`default_nettype none
module MULT18X18D #(
    parameter REG_INPUTA_CLK = "NONE", parameter REG_INPUTA_CE = "CE0", parameter REG_INPUTA_RST = "RST0",
    parameter REG_INPUTB_CLK = "NONE", parameter REG_INPUTB_CE = "CE0", parameter REG_INPUTB_RST = "RST0",
    parameter REG_INPUTC_CLK = "NONE", parameter REG_INPUTC_CE = "CE0", parameter REG_INPUTC_RST = "RST0",
    parameter REG_PIPELINE_CLK = "NONE", parameter REG_PIPELINE_CE = "CE0", parameter REG_PIPELINE_RST = "RST0",
    parameter REG_OUTPUT_CLK = "NONE", parameter REG_OUTPUT_CE = "CE0", parameter REG_OUTPUT_RST = "RST0",
    parameter CLK0_DIV = "ENABLED", parameter CLK1_DIV = "ENABLED",
    parameter CLK2_DIV = "ENABLED", parameter CLK3_DIV = "ENABLED",
    parameter HIGHSPEED_CLK = "NONE", parameter GSR = "ENABLED", parameter CAS_MATCH_REG = "FALSE",
    parameter SOURCEB_MODE = "B_SHIFT", parameter MULT_BYPASS = "DISABLED", parameter RESETMODE = "SYNC"
) (
    input wire A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0,
    input wire B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0,
    input wire C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0,
    input wire SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    input wire CLK0, CE0, RST0,
    output wire P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18,
                P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0
);
    wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
    function automatic registered(input [8*4-1:0] clk);
        registered = clk != "NONE";
    endfunction

    initial begin
        if (!(REG_INPUTA_CLK == "NONE" || REG_INPUTA_CLK == "CLK0") ||
            !(REG_INPUTB_CLK == "NONE" || REG_INPUTB_CLK == "CLK0") ||
            !(REG_PIPELINE_CLK == "NONE" || REG_PIPELINE_CLK == "CLK0") ||
            !(REG_OUTPUT_CLK == "NONE" || REG_OUTPUT_CLK == "CLK0"))
            $fatal(1, "MULT18X18D stand-in: only CLK0 or NONE is modelled for REG_*_CLK");
        if (REG_INPUTA_CE != "CE0" || REG_INPUTB_CE != "CE0" || REG_PIPELINE_CE != "CE0" ||
            REG_OUTPUT_CE != "CE0" || REG_INPUTA_RST != "RST0" || REG_INPUTB_RST != "RST0" ||
            REG_PIPELINE_RST != "RST0" || REG_OUTPUT_RST != "RST0")
            $fatal(1, "MULT18X18D stand-in: only CE0 and RST0 are modelled for REG_*_CE/RST");
        if (RESETMODE != "SYNC" || MULT_BYPASS != "DISABLED" || HIGHSPEED_CLK != "NONE")
            $fatal(1, "MULT18X18D stand-in: only RESETMODE=SYNC, MULT_BYPASS=DISABLED, HIGHSPEED_CLK=NONE");
    end

    always @(posedge CLK0)
        if (SOURCEA !== 1'b0 || SOURCEB !== 1'b0)
            $fatal(1, "MULT18X18D stand-in: the shift-chain inputs (SOURCEA/SOURCEB = 1) are not modelled");

    // Input registers: operand and its SIGNED flag travel together.
    reg [17:0] a_q = 0, b_q = 0;
    reg sa_q = 0, sb_q = 0;
    always @(posedge CLK0) begin
        if (RST0) begin
            a_q <= 0; sa_q <= 0;
        end else if (CE0) begin
            a_q <= a; sa_q <= SIGNEDA;
        end
        if (RST0) begin
            b_q <= 0; sb_q <= 0;
        end else if (CE0) begin
            b_q <= b; sb_q <= SIGNEDB;
        end
    end
    wire [17:0] a_m = registered(REG_INPUTA_CLK) ? a_q : a;
    wire [17:0] b_m = registered(REG_INPUTB_CLK) ? b_q : b;
    wire sa_m = registered(REG_INPUTA_CLK) ? sa_q : SIGNEDA;
    wire sb_m = registered(REG_INPUTB_CLK) ? sb_q : SIGNEDB;

    // The multiplier: each operand extended to 36 bits by its own SIGNED flag.
    wire [35:0] a_x = {{18{sa_m & a_m[17]}}, a_m};
    wire [35:0] b_x = {{18{sb_m & b_m[17]}}, b_m};
    wire [35:0] prod = a_x * b_x;

    // Pipeline register, then output register.
    reg [35:0] pipe_q = 0, out_q = 0;
    always @(posedge CLK0) begin
        if (RST0)
            pipe_q <= 0;
        else if (CE0)
            pipe_q <= prod;
    end
    wire [35:0] pipe_m = registered(REG_PIPELINE_CLK) ? pipe_q : prod;
    always @(posedge CLK0) begin
        if (RST0)
            out_q <= 0;
        else if (CE0)
            out_q <= pipe_m;
    end
    wire [35:0] p = registered(REG_OUTPUT_CLK) ? out_q : pipe_m;
    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18,
            P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = p;
endmodule
`default_nettype wire

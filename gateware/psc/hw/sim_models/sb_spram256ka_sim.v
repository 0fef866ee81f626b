// Behavioural model of the Lattice iCE40 UltraPlus SB_SPRAM256KA, for simulation only.
//
// Written for this project from Lattice's description of the cell ("iCE40
// SPRAM Usage Guide", TN1314): 16384 words of 16 bits, one port, every
// operation on the rising edge of CLOCK:
//   - CHIPSELECT high, WREN low: read; DATAOUT shows mem[ADDRESS] after the edge
//     (one cycle read latency).
//   - CHIPSELECT high, WREN high: write the nibbles of DATAIN whose MASKWREN bit
//     is set (MASKWREN[n] guards DATAIN[4n+3:4n]). The guide does not say what
//     DATAOUT shows meanwhile; it becomes unknown (X), so that a design reading
//     it after a write fails in simulation instead of relying on a guess.
//   - CHIPSELECT low: nothing happens; DATAOUT keeps the last word read.
//   - STANDBY high: nothing is read or written, DATAOUT becomes unknown.
//   - SLEEP high: the periphery is off but the contents are kept; DATAOUT is
//     pulled to 0 at once, without waiting for a clock.
//   - POWEROFF low (the pin is active low): the core loses power, so every word
//     becomes unknown and DATAOUT is 0 at once, until POWEROFF rises again.
// A design that only stores data ties STANDBY and SLEEP low and POWEROFF high.
// The contents and DATAOUT start unknown: the cell has no initial value.
//
// psc.hw.spram.sb_spram256ka_sim_model() returns this text; tests/test_spram.py
// runs it cycle by cycle against the model that Yosys ships.
`default_nettype none
module SB_SPRAM256KA (
    input wire [13:0] ADDRESS,
    input wire [15:0] DATAIN,
    input wire [3:0] MASKWREN,
    input wire WREN,
    input wire CHIPSELECT,
    input wire CLOCK,
    input wire STANDBY,
    input wire SLEEP,
    input wire POWEROFF,
    output reg [15:0] DATAOUT
);
    localparam WORDS = 16384;

    reg [15:0] mem [0:WORDS-1];
    // Sleep and power-off act without a clock; one edge-sensitive input covers both.
    wire off = SLEEP | ~POWEROFF;
    // The bits of the word a write replaces; the others keep what they hold.
    wire [15:0] write_bits = {{4{MASKWREN[3]}}, {4{MASKWREN[2]}}, {4{MASKWREN[1]}}, {4{MASKWREN[0]}}};
    // Set while the contents are lost (as they are before the first write), so
    // that a clock during power-off does not clear every word again.
    reg lost;
    integer i;

    initial lost = 1'b1;

    // One process owns the memory and DATAOUT, power-off included, with
    // non-blocking assignments only: Verilator lints it clean under -Wall, and a
    // clock edge that meets the fall of POWEROFF ends in the lost state either way.
    always @(posedge CLOCK or posedge off or negedge POWEROFF) begin
        if (!POWEROFF) begin
            if (!lost) begin
                for (i = 0; i < WORDS; i = i + 1)
                    mem[i] <= 16'bx;
                lost <= 1'b1;
            end
            DATAOUT <= 16'd0;
        end else begin
            lost <= 1'b0;
            if (SLEEP)
                DATAOUT <= 16'd0;
            else if (STANDBY)
                DATAOUT <= 16'bx;
            else if (CHIPSELECT) begin
                if (WREN) begin
                    mem[ADDRESS] <= (mem[ADDRESS] & ~write_bits) | (DATAIN & write_bits);
                    DATAOUT <= 16'bx;
                end else
                    DATAOUT <= mem[ADDRESS];
            end
        end
    end
endmodule
`default_nettype wire

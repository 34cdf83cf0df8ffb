namespace BlockRepl.Core.Journal;

/// <summary>Per-record flags (byte 9 of the record header). Bits not defined here are invalid on the wire.</summary>
[Flags]
internal enum JournalRecordFlags : byte
{
    None = 0,

    /// <summary>Force unit access: the record is durable on the receiver before its ack counts it as durable.</summary>
    Fua = 1,
}

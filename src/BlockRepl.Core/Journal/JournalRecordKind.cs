namespace BlockRepl.Core.Journal;

/// <summary>
/// What a journal record does to the volume (byte 8 of the record header). The values are the wire values of
/// the replication stream (replication.proto, comment above <c>message Batch</c>); 0 and 5..255 are invalid.
/// </summary>
internal enum JournalRecordKind : byte
{
    /// <summary>Write the payload at the offset; the payload is <c>length</c> bytes.</summary>
    Write = 1,

    /// <summary>Discard a range (the data becomes unspecified); no payload.</summary>
    Trim = 2,

    /// <summary>Make a range read as zeroes; no payload.</summary>
    Zero = 3,

    /// <summary>A barrier: everything before it becomes durable before anything after it; no payload, no range.</summary>
    Flush = 4,
}

using System.Diagnostics.CodeAnalysis;

namespace BlockRepl.Core.Journal;

/// <summary>
/// Journal bytes that break the record or batch format (unknown kind, bad CRC, seq gap, truncation...). The
/// receiver ends the replication stream on it (DATA_LOSS or FAILED_PRECONDITION) and the sender resyncs from
/// its dirty bitmap; nothing in such a batch is applied.
/// </summary>
internal sealed class JournalFormatException : Exception
{
    public JournalFormatException(string message) : base(message) { }

    public JournalFormatException() { }

    public JournalFormatException(string message, Exception inner) : base(message, inner) { }

    /// <summary>The one place journal decoding throws from, so callers stay small and inlinable.</summary>
    [DoesNotReturn]
    internal static void Throw(string message) => throw new JournalFormatException(message);
}

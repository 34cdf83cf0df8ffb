namespace BlockRepl.Replication.Grpc;

/// <summary>Writes the messages of a stream, one write at a time (a second concurrent write throws).</summary>
internal interface IAsyncStreamWriter<in T>
{
    /// <summary>Writes and flushes one message; completes when the transport took it (not when the peer read it).</summary>
    Task WriteAsync(T message, CancellationToken cancellationToken = default);
}

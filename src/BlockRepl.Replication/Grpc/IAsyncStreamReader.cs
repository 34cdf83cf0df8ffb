namespace BlockRepl.Replication.Grpc;

/// <summary>Reads the messages of a stream one at a time, in order (Grpc.Core's interface of the same name).</summary>
internal interface IAsyncStreamReader<out T>
{
    /// <summary>The message the last successful <see cref="MoveNext"/> read.</summary>
    T Current { get; }

    /// <summary>
    /// Reads the next message: true when <see cref="Current"/> holds one, false at the end of the stream
    /// (status OK). A non-OK end throws <see cref="RpcException"/>.
    /// </summary>
    Task<bool> MoveNext(CancellationToken cancellationToken);
}

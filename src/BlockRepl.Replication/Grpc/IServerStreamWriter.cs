namespace BlockRepl.Replication.Grpc;

/// <summary>The response stream a server handler writes to.</summary>
internal interface IServerStreamWriter<in T> : IAsyncStreamWriter<T>
{
}
